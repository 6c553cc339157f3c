"""The Malpedia REST API over one aiohttp session, within a request budget, with polite retries.

429 and 5xx answers, timeouts and dropped connections are retried with exponential backoff and
jitter, never sooner than the server's ``Retry-After`` (a 429 also holds back every other request of
this client). Anything else fails at once with a ``MalpediaError`` naming the URL and status, and so
does a body over the size cap (1 MiB; 32 MiB for the whole family catalogue of ``get/families``): it
is refused before it is read whole, and asking again would bring the same body. The API token goes
into the ``Authorization`` header only; it is never part of an error, log line or repr.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ti_pipeline.core import settings
from ti_pipeline.core.http import MAX_RESPONSE_BYTES, ResponseTooLarge, read_capped
from ti_pipeline.core.retry import Backoff, TryAgain, retry_after_seconds, retry_call_async
from ti_pipeline.threat_actors.budget import RequestBudget

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

PUBLIC_API = str(settings.default("TI_MALPEDIA_URL"))
MAX_FAMILIES_BYTES = 32 << 20
"""Cap on ``get/families``: every family in one object (2.8 MB in the shipped snapshot), so 1 MiB is too small."""
MAX_BACKOFF_SECONDS = 300.0
"""Longest wait the backoff alone asks for (a ``Retry-After`` may ask more, up to ``max_retry_wait``)."""


class MalpediaError(Exception):
    """A request that failed for good: the URL, the HTTP status (None for a network failure), why."""

    def __init__(self, url: str, status: int | None, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url, self.status, self.reason = url, status, reason


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    retry_wait: float = 0.0


def _retryable(status: int) -> bool:
    return status == 429 or 500 <= status < 600


@dataclass(frozen=True)
class ClientOptions:
    """How the client treats the API; the Malpedia resource's fields are made from these."""

    max_retries: int = 5
    """Retries after the first try (429, 5xx, timeouts, dropped connections)."""
    backoff_base: float = 1.0
    """Backoff before the first retry; doubles with every further one."""
    max_retry_wait: float = 3600.0
    """A longer ``Retry-After`` fails the request at once."""
    timeout: float = 60.0
    """Seconds for one request."""
    max_response_bytes: int = MAX_RESPONSE_BYTES
    """Largest response body read (decompressed); a larger one is refused before it is read whole."""
    max_families_bytes: int = MAX_FAMILIES_BYTES
    """The same for ``get/families``, one document of every family."""


class MalpediaClient:
    """``async with MalpediaClient(url) as api: await api.get_json("get/version")``; ``overrides``
    replace single fields of ``options`` (``MalpediaClient(url, max_retries=1)``)."""

    def __init__(
        self,
        base_url: str = PUBLIC_API,
        *,
        token: str | None = None,
        budget: RequestBudget | None = None,
        options: ClientOptions = ClientOptions(),
        rand: Callable[[], float] = random.random,
        **overrides: Any,
    ):
        options = replace(options, **overrides)
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        token = (token or "").strip()  # a token from a secret file or env var often ends in a newline
        if token:
            self._headers["Authorization"] = f"apitoken {token}"
        self.budget = budget or RequestBudget()
        self.backoff = Backoff(options.max_retries + 1, options.backoff_base, MAX_BACKOFF_SECONDS)
        self.max_retry_wait = options.max_retry_wait
        self.timeout = options.timeout
        self.rand = rand
        self.max_response_bytes = options.max_response_bytes
        self.max_families_bytes = options.max_families_bytes
        self.stats = ClientStats()
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"MalpediaClient({self.base_url!r}, token={'set' if 'Authorization' in self._headers else 'unset'})"

    async def __aenter__(self) -> MalpediaClient:
        import aiohttp  # imported by a sync only, not by every process that loads the code location

        self._session = aiohttp.ClientSession(headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    async def get_json(self, path: str, *, max_bytes: int | None = None) -> Any:
        """GET ``{base}/{path}`` and decode its JSON body, retrying what is worth retrying.

        A body over ``max_bytes`` (default ``max_response_bytes``) fails for good, unread past the cap.
        """
        limit = self.max_response_bytes if max_bytes is None else max_bytes
        if self._session is None:
            raise RuntimeError("use MalpediaClient as `async with`")
        url = self.url(path)
        import aiohttp

        async def once() -> Any:
            await self.budget.acquire()
            self.stats.requests += 1
            try:
                async with self._session.get(url) as response:
                    status = response.status
                    if status == 200:
                        try:
                            body = await read_capped(response, limit)
                        except ResponseTooLarge:
                            reason = f"response body over the {limit}-byte cap; not read, not retried"
                            raise MalpediaError(url, status, reason) from None
                        try:
                            return json.loads(body)
                        except ValueError as exc:
                            raise MalpediaError(url, status, f"invalid JSON ({exc})") from None
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                    if not _retryable(status):
                        raise MalpediaError(url, status, f"HTTP {status} {response.reason or ''}".strip())
                    raise TryAgain(f"HTTP {status}", status, retry_after)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise TryAgain(f"{type(exc).__name__}: {exc}") from None

        def before_retry(failure: Exception, delay: float) -> None:
            """Give up on a wait over the limit; a 429 holds back every request of this client."""
            assert isinstance(failure, TryAgain)
            asked = delay if failure.retry_after is None else failure.retry_after  # not the jitter on top
            if asked > self.max_retry_wait:
                reason = f"{failure.reason}, server asks to wait {asked:.0f}s (limit {self.max_retry_wait:.0f}s)"
                raise MalpediaError(url, failure.status, reason)
            if failure.status == 429:
                self.budget.hold(delay)
            self.stats.retries += 1
            self.stats.retry_wait += delay

        try:
            return await retry_call_async(once, self.backoff, what=url, on_retry=before_retry, logger=log, rand=self.rand)
        except TryAgain as last:
            reason = f"{last.reason}, gave up after {self.backoff.attempts} attempts"
            raise MalpediaError(url, last.status, reason) from None

    async def get_version(self) -> dict[str, Any]:
        body = await self.get_json("get/version")
        if not isinstance(body, dict) or "version" not in body:
            raise MalpediaError(self.url("get/version"), 200, f"no 'version' in {str(body)[:200]!r}")
        return body

    async def list_actors(self) -> list[str]:
        body = await self.get_json("list/actors")
        if not isinstance(body, list) or not all(isinstance(a, str) for a in body):
            raise MalpediaError(self.url("list/actors"), 200, "expected a JSON list of actor ids")
        return body

    async def get_actor(self, actor_id: str) -> dict[str, Any]:
        body = await self.get_json(f"get/actor/{quote(actor_id, safe='')}")
        if not isinstance(body, dict):
            raise MalpediaError(self.url(f"get/actor/{actor_id}"), 200, "expected a JSON object")
        return body

    async def get_families(self) -> dict[str, Any]:
        body = await self.get_json("get/families", max_bytes=self.max_families_bytes)
        if not isinstance(body, dict):
            raise MalpediaError(self.url("get/families"), 200, "expected a JSON object keyed by family id")
        return body
