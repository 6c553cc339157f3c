"""Named failpoints, as TiDB has them: let a test kill the process at an exact point of real work.

``TI_FAILPOINTS="vt_export.part_written=kill,load.merge=kill@2"`` makes the process SIGKILL itself the
first (or N-th) time it passes that point. Unset, a failpoint costs a settings lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from functools import cache

from ti_pipeline.core import settings

_passes: Counter[str] = Counter()


@cache
def _armed(spec: str) -> dict[str, int]:
    armed = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = action.partition("@")
        if action != "kill":
            raise ValueError(f"unknown failpoint action in TI_FAILPOINTS: {item!r}")
        armed[name] = int(nth or 1)
    return armed


def failpoint(name: str) -> None:
    """SIGKILL this process if ``name`` is armed and this is its N-th pass."""
    spec = settings.text("TI_FAILPOINTS")
    if not spec or name not in (armed := _armed(spec)):
        return
    _passes[name] += 1
    if _passes[name] == armed[name]:
        os.kill(os.getpid(), signal.SIGKILL)
