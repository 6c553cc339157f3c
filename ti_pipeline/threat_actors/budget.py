"""A request budget over several sliding windows (the retry delay after a refused request is ``core.retry``'s).

Malpedia allows 60 requests a minute and 2000 an hour. ``RequestBudget.reserve`` claims the next slot
that keeps every window within its limit and says how long to wait for it; the clock is injectable so
the schedule itself can be tested without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from ti_pipeline.core import settings

# Malpedia's published quota: the settings table's TI_MALPEDIA_REQUESTS_PER_MINUTE / _PER_HOUR.
DEFAULT_LIMITS = (
    (int(settings.default("TI_MALPEDIA_REQUESTS_PER_MINUTE")), 60.0),
    (int(settings.default("TI_MALPEDIA_REQUESTS_PER_HOUR")), 3600.0),
)


class RequestBudget:
    """At most ``n`` requests in any ``window`` seconds, for every ``(n, window)`` in ``limits``."""

    def __init__(
        self,
        limits: Sequence[tuple[int, float]] = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        if any(n < 1 or window <= 0 for n, window in limits):
            raise ValueError(f"every limit needs n >= 1 and window > 0: {list(limits)}")
        self.limits = [(int(n), float(window)) for n, window in limits]
        self.clock, self.sleep = clock, sleep
        # Start times of the last n requests of each window, in non-decreasing order.
        self._starts = [deque(maxlen=n) for n, _ in self.limits]
        self._hold_until = float("-inf")
        self.waited = 0.0

    def reserve(self) -> float:
        """Claim the next free slot; returns the seconds to wait before sending the request."""
        now = self.clock()
        start = max(now, self._hold_until)
        for (n, window), starts in zip(self.limits, self._starts, strict=True):
            if len(starts) == n:
                start = max(start, starts[0] + window)
        for starts in self._starts:
            starts.append(start)
        wait = start - now
        self.waited += wait
        return wait

    def hold(self, seconds: float) -> None:
        """No request may start in the next ``seconds`` (the server asked everyone to slow down)."""
        self._hold_until = max(self._hold_until, self.clock() + seconds)

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await self.sleep(wait)

