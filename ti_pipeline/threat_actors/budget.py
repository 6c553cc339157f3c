"""A request budget over several sliding windows (the retry delay after a refused request is ``core.retry``'s).

Malpedia allows 60 requests a minute and 2000 an hour, per account: ``SharedRequestBudget`` keeps the
windows in the warehouse, so every run and process shares them (what a run gets from the resource). ``RequestBudget.reserve`` claims the next slot
that keeps every window within its limit and says how long to wait for it; the clock is injectable so
the schedule itself can be tested without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from ti_pipeline.core import schema, settings
from ti_pipeline.core.warehouse import Warehouse

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



class SharedRequestBudget(RequestBudget):
    """The same windows, kept in the warehouse (``request_budgets``, ``request_budget_starts``): every
    run and process using one warehouse draws from one budget, and the hour's count outlives a run.

    A reservation is one short transaction that first locks the service's row (so reservations of
    all processes queue there), reads the n-th latest start of each window, and records its own
    start. Times are seconds since the epoch on the reserving host (hosts must keep NTP time).
    """

    def __init__(
        self,
        warehouse: Warehouse,
        service: str = "malpedia",
        limits: Sequence[tuple[int, float]] = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        super().__init__(limits, clock=clock, sleep=sleep)
        self.warehouse, self.service = warehouse, service
        self._longest = max(window for _, window in self.limits)

    def _lock_row(self, conn: sa.Connection) -> float:
        """Create the service's row if needed, lock it, and return its hold."""
        t = schema.request_budgets
        row = {"service": self.service, "hold_until": 0.0}
        insert = (sqlite.insert(t).values(row).on_conflict_do_nothing() if conn.dialect.name == "sqlite"
                  else sa.insert(t).values(row).prefix_with("IGNORE"))
        conn.execute(insert)
        conn.execute(t.update().where(t.c.service == self.service).values(hold_until=t.c.hold_until))
        return conn.execute(sa.select(t.c.hold_until).where(t.c.service == self.service)).scalar_one()

    def _reserve(self, conn: sa.Connection) -> float:
        s = schema.request_budget_starts
        hold = self._lock_row(conn)
        now = self.clock()
        start = max(now, hold)
        for n, window in self.limits:
            nth_latest = conn.execute(
                sa.select(s.c.started_at).where(s.c.service == self.service)
                .order_by(s.c.started_at.desc()).limit(1).offset(n - 1)
            ).scalar()
            if nth_latest is not None:
                start = max(start, nth_latest + window)
        conn.execute(s.insert().values(service=self.service, started_at=start))
        conn.execute(s.delete().where(s.c.service == self.service, s.c.started_at < now - self._longest))
        return start - now

    def reserve(self) -> float:
        wait = self.warehouse.transaction(self._reserve)
        self.waited += wait
        return wait

    def hold(self, seconds: float) -> None:
        def work(conn: sa.Connection) -> None:
            t = schema.request_budgets
            until = max(self._lock_row(conn), self.clock() + seconds)
            conn.execute(t.update().where(t.c.service == self.service).values(hold_until=until))

        self.warehouse.transaction(work)

    async def acquire(self) -> None:
        wait = await asyncio.to_thread(self.reserve)  # a warehouse round trip: off the event loop
        if wait > 0:
            await self.sleep(wait)
