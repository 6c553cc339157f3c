"""Retry timing shared by the HTTP clients (Broccoli, Malpedia): backoff with jitter, Retry-After."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable


def backoff_seconds(retry: int, *, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with equal jitter: between half and all of ``base * 2**retry`` (capped).

    The jitter spreads clients refused together, so they do not come back together.
    """
    ceiling = min(cap, base * 2**retry)
    return ceiling * (0.5 + rand() / 2)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
