"""Named failpoints, as TiDB has them: let a test kill the process at an exact point of real work.

``TI_FAILPOINTS="vt_export.part_written=kill,load.merge=kill@2"`` makes the process SIGKILL itself the
first (or N-th) time it passes that point; ``=stop`` SIGSTOPs it there instead (it holds what it holds,
e.g. a pool slot, until the test kills it). Unset, a failpoint costs a settings lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from functools import cache

from ti_pipeline.core import settings

_passes: Counter[str] = Counter()
_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


@cache
def _armed(spec: str) -> dict[str, tuple[int, signal.Signals]]:
    armed = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = action.partition("@")
        if action not in _SIGNALS:
            raise ValueError(f"unknown failpoint action in TI_FAILPOINTS: {item!r}")
        armed[name] = (int(nth or 1), _SIGNALS[action])
    return armed


def failpoint(name: str) -> None:
    """SIGKILL (or SIGSTOP) this process if ``name`` is armed and this is its N-th pass."""
    spec = settings.text("TI_FAILPOINTS")
    if not spec or name not in (armed := _armed(spec)):
        return
    _passes[name] += 1
    nth, signum = armed[name]
    if _passes[name] == nth:
        os.kill(os.getpid(), signum)
