"""The Malpedia request budget shared through the warehouse, across budgets, runs and processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from bisect import bisect_left

from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.threat_actors.budget import SharedRequestBudget
from ti_pipeline.threat_actors.client import MalpediaClient
from ti_pipeline.threat_actors.sync import sync_malpedia


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_two_budgets_on_one_warehouse_share_every_window(warehouse):
    clock = FakeClock()
    first = SharedRequestBudget(warehouse, limits=[(3, 10.0), (5, 100.0)], clock=clock)
    second = SharedRequestBudget(warehouse, limits=[(3, 10.0), (5, 100.0)], clock=clock)
    assert [first.reserve(), first.reserve(), second.reserve(), second.reserve(), first.reserve()] == [0, 0, 0, 10, 10]
    # A later run (a new budget) still sees the hour's requests: the 6th must wait for the 100 s window.
    clock.now += 20
    later = SharedRequestBudget(warehouse, limits=[(3, 10.0), (5, 100.0)], clock=clock)
    assert later.reserve() == 80


def test_a_hold_is_shared(warehouse):
    clock = FakeClock()
    first = SharedRequestBudget(warehouse, limits=[(100, 60.0)], clock=clock)
    second = SharedRequestBudget(warehouse, limits=[(100, 60.0)], clock=clock)
    first.hold(5.0)
    assert second.reserve() == 5.0


LIMITS = [(5, 0.5), (20, 2.0)]


class RecordedClock(threading.local):
    """``time.time`` that remembers, per thread (reservations run in threads), what it last said: a
    reservation's start is that plus its wait."""

    last = 0.0

    def __call__(self) -> float:
        self.last = time.time()
        return self.last


def _sync_in_a_process(base_url: str, warehouse_url: str) -> tuple[int, list[float]]:
    """One sync; returns its request count and the start the shared budget granted each request."""
    warehouse = Warehouse(warehouse_url)
    clock = RecordedClock()
    starts: list[float] = []

    class RecordingBudget(SharedRequestBudget):
        def reserve(self) -> float:
            wait = super().reserve()
            starts.append(clock.last + wait)
            return wait

    async def run():
        budget = RecordingBudget(warehouse, limits=LIMITS, clock=clock)
        async with MalpediaClient(base_url, budget=budget, backoff_base=0.01) as api:
            return await sync_malpedia(api, warehouse, force=True, concurrency=4)

    report = asyncio.run(run())
    warehouse.dispose()
    return report.requests, starts


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(bisect_left(times, t + window) - i for i, t in enumerate(times))


def test_two_concurrent_syncs_in_two_processes_stay_within_one_budget(malpedia_server, warehouse, warehouse_url):
    malpedia_server.clear_log()
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(2) as pool:
        results = pool.starmap(_sync_in_a_process, [(malpedia_server.base_url, warehouse_url)] * 2)
    starts = sorted(start for _, granted in results for start in granted)
    # Every request the server saw was granted a start by the one budget the two processes share.
    assert [requests for requests, _ in results] == [len(granted) for _, granted in results]
    assert len(starts) == len(malpedia_server.request_times) > 2 * LIMITS[1][0]  # fills the longer window twice
    # The grants, not the arrivals, are what the budget decides (a busy machine can bunch arrivals).
    # (A start may fall exactly one window after the n-th latest: 1 us less, for the float sums.)
    for n, window in LIMITS:
        assert most_in_any_window(starts, window - 1e-6) <= n, (n, window)
    # Alone, each sync would have started its requests twice as fast: the two did wait for each other.
    assert starts[-1] - starts[0] >= (len(starts) / LIMITS[1][0] - 1) * LIMITS[1][1]
