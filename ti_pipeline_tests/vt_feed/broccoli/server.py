"""A real Broccoli-like HTTP server on loopback (aiohttp, own thread and loop) that injects faults.

``objects`` maps SHA1 -> body bytes or a ``BigBody`` (absent = 404). ``faults`` maps SHA1 -> a list
of faults served, one per request, before the object: ``("429", retry_after)``, ``("503",)``,
``("slow", seconds)``, ``("drop",)`` (connection closed without an answer),
``("cut",)`` (connection closed half-way through the body), ``("401",)``, ``("403",)``. A fault list ending
in ``("always", fault)`` repeats that fault forever. Every request is logged as (sha1, monotonic time);
``sent`` counts the bytes of each ``BigBody`` handed to the socket before the client hung up.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from aiohttp import web

CHUNK = 64 << 10


@dataclass
class BigBody:
    """``size`` bytes of a JSON object that starts well-formed, generated chunk by chunk, never held whole.

    ``gzip``: sent gzip-compressed (``Content-Encoding: gzip``) with the small ``Content-Length`` of
    the compressed form, i.e. a gzip bomb; otherwise ``Content-Length`` is sent only if ``declare_length``.
    """

    size: int
    gzip: bool = False
    declare_length: bool = False

    HEAD = b'{"classification": "malware", "padding": "'

    def plain(self) -> Iterator[bytes]:
        yield self.HEAD
        for start in range(len(self.HEAD), self.size, CHUNK):
            yield b"x" * min(CHUNK, self.size - start)

    def wire(self) -> Iterator[bytes]:
        if not self.gzip:
            yield from self.plain()
            return
        compressor = zlib.compressobj(wbits=31)
        for chunk in self.plain():
            if out := compressor.compress(chunk):
                yield out
        yield compressor.flush()

    @cached_property
    def wire_size(self) -> int:
        return sum(map(len, self.wire()))

    async def send(self, request: web.Request, sent: Counter[str], key: str) -> web.StreamResponse:
        headers = {"Content-Type": "application/json"}
        if self.gzip:
            headers["Content-Encoding"] = "gzip"
        if self.gzip or self.declare_length:
            headers["Content-Length"] = str(self.wire_size)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        try:
            for chunk in self.wire():
                await response.write(chunk)
                sent[key] += len(chunk)
        except ConnectionError:
            pass  # the client hung up: the rest is never generated
        return response


class BroccoliServer:
    def __init__(self, prefix: str = "/latest-reports", required_token: str | None = None):
        self.prefix = prefix
        self.objects: dict[str, bytes | BigBody] = {}
        self.faults: dict[str, list[tuple]] = {}
        self.requests: dict[str, list[float]] = defaultdict(list)
        self.sent: Counter[str] = Counter()
        self.required_token = required_token
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def request_count(self) -> int:
        return sum(len(v) for v in self.requests.values())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        sha1 = request.match_info["sha1"]
        self.requests[sha1].append(time.monotonic())
        queue = self.faults.get(sha1)
        fault = None
        if queue:
            fault = queue[0][1] if queue[0][0] == "always" else queue.pop(0)
        if fault is None and self.required_token is not None:
            if request.headers.get("Authorization") != f"Bearer {self.required_token}":
                fault = ("401",)
        if fault is not None:
            kind = fault[0]
            if kind == "429":
                return web.Response(status=429, headers={"Retry-After": str(fault[1])}, text="slow down")
            if kind in ("401", "403", "500", "503"):
                return web.Response(status=int(kind), text=kind)
            if kind == "slow":
                await asyncio.sleep(fault[1])
            elif kind == "drop":
                request.transport.close()
                return web.Response(status=200, text="never delivered")
            elif kind == "cut":
                response = web.StreamResponse(headers={"Content-Length": "100", "Content-Type": "application/json"})
                await response.prepare(request)
                await response.write(b'{"classifi')
                request.transport.close()
                return response
        body = self.objects.get(sha1)
        if body is None:
            return web.Response(status=404, text="No such object")
        if isinstance(body, BigBody):
            return await body.send(request, self.sent, sha1)
        return web.Response(body=body, content_type="application/json")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get(self.prefix + "/{sha1}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> BroccoliServer:
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._start())
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
