"""Run an external loader (tidb-lightning) as a subprocess, streaming its log lines as they come.

Output is read line by line in a thread so a silent, hung process still hits the timeout; on a
timeout the whole process group is killed. Secrets are masked in every line before it is logged,
in every form a tool or a library may print them (escaped, quoted, URL-encoded).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from ti_pipeline.vt_feed.load.base import LoaderError

MASK = "******"


@dataclass(frozen=True)
class RunResult:
    returncode: int
    lines: int
    last_error: str | None


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def _escaped(text: str) -> set[str]:
    """``text`` as written inside a TOML basic string (only ``"`` and ``\\`` escaped), JSON (with and
    without ``\\u`` escapes) or a Python repr, and percent-encoded as urllib and SQLAlchemy URLs do it,
    in either hex case. (A TOML literal string holds the raw text.)"""
    forms = {
        text.replace("\\", "\\\\").replace('"', '\\"'),
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        repr(text)[1:-1],
        repr(text + "'\"")[1:-4],  # the repr of a longer string holding both quotes: \' escaped
    }
    for encoded in (quote(text, safe=""), quote(text), quote(text, safe=" +"), quote_plus(text)):
        forms |= {encoded, _lower_hex(encoded)}
    return forms


def secret_forms(secret: str) -> set[str]:
    """The secret and its escaped forms, also escaped twice (a JSON log line quoted in a repr, ...)."""
    once = {secret} | _escaped(secret)
    return once | {twice for form in once for twice in _escaped(form)}


@functools.lru_cache(maxsize=16)
def _pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    forms = {form for secret in secrets if secret for form in secret_forms(secret)}
    if not forms:
        return None
    # Longest first: where forms share a start (``ab%`` and its URL form ``ab%25``), the longer one is
    # masked whole instead of leaving its tail behind.
    return re.compile("|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True)))


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every form of every secret replaced by ``MASK``."""
    pattern = _pattern(tuple(secrets))
    return text if pattern is None else pattern.sub(MASK, text)


def is_error_line(line: str) -> bool:
    upper = line.upper()
    return "[ERROR]" in upper or "[FATAL]" in upper or upper.startswith(("ERROR", "FATAL")) or " ERROR:" in upper


def run_streaming(
    argv: Sequence[str],
    *,
    log: logging.Logger,
    timeout: float,
    secrets: Sequence[str] = (),
    env: dict[str, str] | None = None,
    what: str | None = None,
) -> RunResult:
    """Run ``argv``; every output line goes to ``log``; fails with the tool's last error line."""
    what = what or os.path.basename(argv[0])
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        env=env,
        start_new_session=True,
    )
    tail: deque[str] = deque(maxlen=20)
    last_error: list[str] = []
    count = [0]

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = redact(raw.rstrip("\n"), secrets)
            count[0] += 1
            tail.append(line)
            if is_error_line(line):
                last_error[:] = [line]
                log.error(f"{what}: {line}")
            else:
                log.info(f"{what}: {line}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        reader.join(5)
        raise LoaderError(f"{what} timed out after {timeout:g}s and was killed; last output: {tail[-1] if tail else '(none)'}") from None
    except BaseException:
        # The run itself is being stopped (terminated from the UI, interrupted): never leave the tool
        # importing into a staging table the re-run is about to re-create.
        _kill(proc)
        raise
    reader.join(30)
    error = last_error[0] if last_error else None
    if returncode != 0:
        reason = error or (tail[-1] if tail else "no output")
        raise LoaderError(f"{what} exited with status {returncode}: {reason}")
    return RunResult(returncode, count[0], error)


def _kill(proc: subprocess.Popen) -> None:
    """The tool and every process it started (it runs in a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
