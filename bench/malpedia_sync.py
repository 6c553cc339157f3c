"""Malpedia sync: requests and time of a first sync and of a no-change sync, against the loopback server.

Serves the real galaxy snapshot (864 actors, 3260 families) on 127.0.0.1, syncs it into a fresh
warehouse twice, and compares the first sync with a plain aiohttp fetch of the same endpoints (no
hashing, no writes). Also prints how long the same requests take under the public API's default budget
(60/min, 2000/h), computed from the budget's own schedule with a simulated clock.

    .venv/bin/python bench/malpedia_sync.py [--warehouse-url URL] [--concurrency 8]

``--warehouse-url`` must name an empty database (the sync's tables are created in it).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp

from ti_pipeline.core import migrations
from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.sample_data.malpedia_galaxy import MalpediaSnapshot
from ti_pipeline.sample_data.malpedia_server import LocalMalpediaServer
from ti_pipeline.threat_actors.attack import AttackCatalog
from ti_pipeline.threat_actors.budget import RequestBudget
from ti_pipeline.threat_actors.client import MalpediaClient
from ti_pipeline.threat_actors.enrich import enrich_actors
from ti_pipeline.threat_actors.sync import sync_malpedia

UNLIMITED = [(10**9, 60.0)]


async def plain_fetch(base: str, concurrency: int) -> int:
    """The same requests with a bare aiohttp session: the floor a sync can reach."""
    async with aiohttp.ClientSession() as session:

        async def get(path: str):
            async with session.get(f"{base}/{path}") as r:
                return await r.json()

        await get("get/version")
        ids = await get("list/actors")
        await get("get/families")
        gate = asyncio.Semaphore(concurrency)

        async def one(actor_id: str):
            async with gate:
                await get(f"get/actor/{actor_id}")

        await asyncio.gather(*(one(a) for a in ids))
        return 3 + len(ids)


async def sync(base: str, warehouse: Warehouse, concurrency: int):
    async with MalpediaClient(base, budget=RequestBudget(UNLIMITED)) as api:
        return await sync_malpedia(api, warehouse, concurrency=concurrency)


def budget_schedule_seconds(requests: int) -> float:
    """When the last of ``requests`` may start under the default budget (simulated clock)."""
    budget = RequestBudget(clock=lambda: 0.0)
    return max(budget.reserve() for _ in range(requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse-url", help="default: a new SQLite file in a temp dir")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.warehouse_url or f"sqlite:///{Path(tmp) / 'warehouse.sqlite'}"
        migrations.upgrade(url)
        warehouse = Warehouse(url)
        snapshot = MalpediaSnapshot.from_galaxy()
        with LocalMalpediaServer(snapshot) as server:
            plain_times = []
            for _ in range(2):  # the first one also warms the server up
                t = time.perf_counter()
                plain_requests = asyncio.run(plain_fetch(server.base_url, args.concurrency))
                plain_times.append(time.perf_counter() - t)
            plain = min(plain_times)
            server.clear_log()
            first = asyncio.run(sync(server.base_url, warehouse, args.concurrency))
            first_log = len(server.requests)
            t = time.perf_counter()
            enriched = enrich_actors(warehouse, AttackCatalog.from_galaxy())
            enrich_seconds = time.perf_counter() - t
            server.clear_log()
            again = asyncio.run(sync(server.base_url, warehouse, args.concurrency))
            again_log = list(server.requests)
        warehouse.dispose()
    print(f"warehouse: {url.split('://')[0]}, concurrency {args.concurrency}")
    print(f"plain aiohttp fetch:  {plain_requests} requests  {plain:.2f} s (best of {len(plain_times)})")
    print(
        f"first sync:           {first.requests} requests (server log {first_log})  {first.seconds:.2f} s  "
        f"= {first.seconds / plain:.1f}x the plain fetch; {len(first.actors.changes.new)} actors, "
        f"{len(first.families.changes.new)} families new"
    )
    print(f"enrichment:           {len(enriched.enriched)} of {enriched.accounting.read} actors mapped, "
          f"{enriched.techniques_written} technique rows, {enrich_seconds:.2f} s")
    print(f"no-change sync:       {again.requests} request(s) {again_log}  {again.seconds * 1000:.1f} ms")
    print(f"first sync under the default budget (60/min, 2000/h): last request starts after "
          f"{budget_schedule_seconds(first.requests) / 60:.1f} min")


if __name__ == "__main__":
    main()
