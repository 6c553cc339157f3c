"""Run an external loader (tidb-lightning) as a subprocess, streaming its log lines as they come.

Output is read line by line in a thread so a silent, hung process still hits the timeout; on a
timeout the whole process group is killed. Secrets are masked in every line before it is logged.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ti_pipeline.loaders.base import LoaderError

MASK = "******"


@dataclass(frozen=True)
class RunResult:
    returncode: int
    lines: int
    last_error: str | None


def redact(line: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            line = line.replace(secret, MASK)
    return line


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
