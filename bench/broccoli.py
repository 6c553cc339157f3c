"""Broccoli lookups per second and client CPU seconds per 10k lookups, one client process, loopback server.

The server is aiohttp's low-level ``web.Server`` in separate process(es) (``--server-processes``,
SO_REUSEPORT), so it does not eat the client's CPU; it answers ``GET /latest-reports/{sha1}`` with a
small JSON object, or 404 for a share of the SHA1s. For each concurrency the same SHA1s are looked up by:

- ``ti_pipeline``: ``BroccoliClient.lookup_stream`` (validation, retries, label mapping), on uvloop when
  installed (as the asset runs it) and on the default asyncio loop;
- ``plain aiohttp``: the upstream tool's pattern (one session, a pool of workers, ``resp.json()``, no
  validation, no retries), on the same loop, as the yardstick.

Example: ``python bench/broccoli.py --lookups 20000 --concurrency 100 500``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NOT_FOUND_EVERY = 5  # one SHA1 in five has no object


def serve(port: int, ready, use_uvloop: bool) -> None:
    from aiohttp import web

    async def handle(request: web.BaseRequest) -> web.Response:
        sha1 = request.path.rsplit("/", 1)[-1]
        if int(sha1[-2:], 16) % NOT_FOUND_EVERY == 0:
            return web.Response(status=404, text="No such object")
        body = b'{"sha1":"%s","classification":"malware","score":0.97,"model_version":"bench"}' % sha1.encode()
        return web.Response(body=body, content_type="application/json")

    async def main() -> None:
        server = web.Server(handle, access_log=None)
        await asyncio.get_running_loop().create_server(server, "127.0.0.1", port, reuse_port=True, backlog=2048)
        ready.set()
        await asyncio.Event().wait()

    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loop_runner(use_uvloop: bool):
    if use_uvloop:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def run_ti_pipeline(url: str, sha1s: list[str], concurrency: int, use_uvloop: bool) -> tuple[float, float, dict]:
    from ti_pipeline.vt_feed.broccoli.client import BroccoliClient

    outcomes: dict[str, int] = {}

    def sink(result) -> bool:
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        return True

    async def main() -> None:
        async with BroccoliClient(url, concurrency=concurrency) as client:
            await client.lookup_stream(sha1s, sink)

    with loop_runner(use_uvloop) as runner:
        wall, cpu = time.perf_counter(), time.process_time()
        runner.run(main())
        return time.perf_counter() - wall, time.process_time() - cpu, outcomes


def run_plain(url: str, sha1s: list[str], concurrency: int, use_uvloop: bool) -> tuple[float, float, dict]:
    import aiohttp

    outcomes: dict[str, int] = {}

    async def main() -> None:
        work = iter(sha1s)
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                for sha1 in work:
                    async with session.get(f"{url}/{sha1}") as resp:
                        if resp.status == 200:
                            data = await resp.json(content_type=None)
                            key = "found" if data.get("classification") else "rejected"
                        else:
                            await resp.read()
                            key = "not_found"
                    outcomes[key] = outcomes.get(key, 0) + 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    with loop_runner(use_uvloop) as runner:
        wall, cpu = time.perf_counter(), time.process_time()
        runner.run(main())
        return time.perf_counter() - wall, time.process_time() - cpu, outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lookups", type=int, default=20_000, help="SHA1s per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--server-processes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of measurements (the best wall and CPU are shown)")
    args = parser.parse_args()

    try:
        import uvloop  # noqa: F401

        have_uvloop = True
    except ImportError:
        have_uvloop = False

    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    servers = []
    for _ in range(args.server_processes):
        ready = ctx.Event()
        proc = ctx.Process(target=serve, args=(port, ready, have_uvloop), daemon=True)
        proc.start()
        ready.wait(30)
        servers.append(proc)
    url = f"http://127.0.0.1:{port}/latest-reports"
    sha1s = [hashlib.sha1(f"bench {i}".encode()).hexdigest() for i in range(args.lookups)]
    variants = [("ti_pipeline", run_ti_pipeline, True), ("plain aiohttp", run_plain, True)] if have_uvloop else []
    variants += [("ti_pipeline", run_ti_pipeline, False), ("plain aiohttp", run_plain, False)]

    print(f"{args.lookups:,} lookups per run, {args.server_processes} server process(es), {os.cpu_count()} cores, "
          f"uvloop {'installed' if have_uvloop else 'missing'}")
    print(f"{'client':<14} {'loop':<8} {'conc':>5} {'lookups/s':>10} {'CPU s/10k':>10} {'vs plain':>9}  outcomes")
    try:
        for _name, func, use_uvloop in variants:  # warm-up: imports, first connections, allocator
            func(url, sha1s[:2000], 100, use_uvloop)
        for concurrency in args.concurrency:
            # Rounds of every variant in turn (not all repeats of one, then the next), so load from
            # other work on the machine falls on every variant alike; the best wall and CPU are kept.
            best: dict[int, tuple[float, float, dict]] = {}
            for _ in range(args.repeat):
                for i, (_name, func, use_uvloop) in enumerate(variants):
                    wall, cpu, outcomes = func(url, sha1s, concurrency, use_uvloop)
                    if i in best:
                        wall, cpu = min(wall, best[i][0]), min(cpu, best[i][1])
                    best[i] = (wall, cpu, outcomes)
            plain_cpu = {use_uvloop: best[i][1] for i, (name, _f, use_uvloop) in enumerate(variants) if name == "plain aiohttp"}
            rows = [(name, use_uvloop, *best[i]) for i, (name, _f, use_uvloop) in enumerate(variants)]
            for name, use_uvloop, wall, cpu, outcomes in rows:
                ratio = plain_cpu[use_uvloop] / cpu if cpu else 0.0
                print(f"{name:<14} {'uvloop' if use_uvloop else 'asyncio':<8} {concurrency:>5} "
                      f"{len(sha1s) / wall:>10,.0f} {cpu / len(sha1s) * 10_000:>10.2f} {ratio:>8.2f}x  "
                      f"{dict(sorted(outcomes.items()))}")
    finally:
        for proc in servers:
            proc.terminate()
            proc.join(5)
    print("vs plain = plain aiohttp CPU / ti_pipeline CPU on the same loop (1.0 = no overhead over the bare loop)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
