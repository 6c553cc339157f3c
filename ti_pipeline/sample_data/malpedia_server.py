"""A loopback HTTP server that speaks the Malpedia API from a ``MalpediaSnapshot``.

The demo and the tests sync against it instead of the public API: it serves ``/api/get/version``,
``/api/list/actors``, ``/api/get/actor/<id>``, ``/api/get/families`` and ``/api/get/family/<id>``,
keeps a log of every request path, can be told to answer the next requests to a path with 429/5xx
(``fail``), and its data can be changed between syncs (``snapshot``; call ``snapshot.bump()`` to
publish a new version). It runs on its own event loop in a background thread, so synchronous code
(a Dagster run) can call it.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ti_pipeline.core import settings
from ti_pipeline.sample_data.malpedia_galaxy import MalpediaSnapshot


@dataclass
class InjectedFailure:
    path: str
    status: int
    retry_after: str | None


class LocalMalpediaServer:
    """``with LocalMalpediaServer(snapshot) as server: ... server.base_url ...``"""

    def __init__(self, snapshot: MalpediaSnapshot, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        self.snapshot = snapshot
        self.host, self.port, self.token = host, port, token
        self.requests: list[str] = []
        self.request_times: list[float] = []
        """When each request arrived (``time.time()``), for tests of the request budget."""
        self._failures: deque[InjectedFailure] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    def fail(self, path: str, status: int = 429, times: int = 1, retry_after: str | None = "0") -> None:
        """Answer the next ``times`` requests to ``path`` (e.g. ``/api/get/version``) with ``status``."""
        with self._lock:
            self._failures.extend(InjectedFailure(path, status, retry_after) for _ in range(times))

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_times.clear()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api/get/version", self._version)
        app.router.add_get("/api/list/actors", self._list_actors)
        app.router.add_get("/api/get/actor/{actor_id}", self._actor)
        app.router.add_get("/api/get/families", self._families)
        app.router.add_get("/api/get/family/{family_id}", self._family)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        with self._lock:
            self.requests.append(request.path)
            self.request_times.append(time.time())
            failure = next((f for f in self._failures if f.path == request.path), None)
            if failure is not None:
                self._failures.remove(failure)
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
            return web.json_response({"detail": "injected failure"}, status=failure.status, headers=headers)
        if self.token and request.headers.get("Authorization") != f"apitoken {self.token}":
            return web.json_response({"detail": "Invalid token."}, status=403)
        return await handler(request)

    async def _version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": self.snapshot.version, "date": self.snapshot.date})

    async def _list_actors(self, _request: web.Request) -> web.Response:
        return web.json_response(sorted(self.snapshot.actors))

    async def _actor(self, request: web.Request) -> web.Response:
        key = request.match_info["actor_id"]
        if key not in self.snapshot.actors:
            return web.json_response({"detail": "Not found."}, status=404)
        return web.json_response(self.snapshot.actor_response(key))

    async def _families(self, _request: web.Request) -> web.Response:
        return web.json_response(self.snapshot.families)

    async def _family(self, request: web.Request) -> web.Response:
        family = self.snapshot.families.get(request.match_info["family_id"])
        if family is None:
            return web.json_response({"detail": "Not found."}, status=404)
        return web.json_response(family)

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def start(self) -> str:
        """Serve in a background thread; returns the API base URL."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-malpedia", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self.base_url

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> LocalMalpediaServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def load_snapshot(path: Path | None) -> MalpediaSnapshot:
    """The snapshot file written by ``ti-pipeline sample-data``, else the one built from the galaxy."""
    if path is not None and path.exists():
        return MalpediaSnapshot.from_json(path.read_text(encoding="utf-8"))
    return MalpediaSnapshot.from_galaxy()


@contextmanager
def serving(snapshot_path: Path | None = None, requests_per_minute: int = 1_000_000) -> Iterator[LocalMalpediaServer]:
    """Serve the snapshot on loopback and point ``TI_MALPEDIA_URL`` at it while the block runs.

    The public API's request budget is lifted for the loopback server; every variable is restored
    afterwards, so what runs next is unaffected.
    """
    overrides = {
        "TI_MALPEDIA_REQUESTS_PER_MINUTE": str(requests_per_minute),
        "TI_MALPEDIA_REQUESTS_PER_HOUR": str(requests_per_minute * 60),
    }
    with LocalMalpediaServer(load_snapshot(snapshot_path)) as server:
        overrides["TI_MALPEDIA_URL"] = server.base_url
        with settings.override(overrides):
            yield server


def serve_forever(host: str, port: int, snapshot_path: Path | None) -> None:
    """Serve in the foreground until interrupted (``ti-pipeline malpedia-server``)."""
    snapshot = load_snapshot(snapshot_path)
    print(
        f"Malpedia API (version {snapshot.version}: {len(snapshot.actors)} actors, "
        f"{len(snapshot.families)} families) on http://{host}:{port}/api",
        flush=True,
    )
    web.run_app(LocalMalpediaServer(snapshot, host, port).app(), host=host, port=port, print=None, access_log=None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--snapshot", type=Path, default=None)
    args = parser.parse_args(argv)
    serve_forever(args.host, args.port, args.snapshot)


if __name__ == "__main__":
    main()
