"""Broccoli lookups: one object per SHA1, many at once over one aiohttp session.

``TI_BROCCOLI_URI`` picks where the objects live:

- ``gs://bucket/prefix``: the GCS JSON API (``/storage/v1/b/{bucket}/o/{object}?alt=media``) with an
  OAuth token from google-auth, or anonymously against ``STORAGE_EMULATOR_HOST``;
- ``http(s)://host/prefix``: ``GET {prefix}/{sha1}``;
- ``file:///folder`` (or a plain path): ``{folder}/{sha1}`` (the demo default).

Every lookup ends in exactly one outcome: ``found`` (HTTP 200 with a JSON object holding a string
``classification``), ``not_found`` (404), ``rejected`` (an invalid SHA1, a body over the size cap or
a body that is not such an object; the reason is kept) or ``failed`` (still a 429/5xx/timeout/reset
after every retry, or a permanent HTTP error such as 403). Retries back off exponentially with jitter
and wait at least what ``Retry-After`` asks. A SHA1 is checked to be 40 hex characters before any URL
is built from it.

The objects are small, so a body over ``max_response_bytes`` (1 MiB by default, decompressed size)
is refused before it is read whole, from every kind of store: one bad or hostile object cannot
exhaust memory, and it is rejected rather than retried, since asking again brings the same object.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlparse

import orjson

from ti_pipeline.core import keys, settings
from ti_pipeline.core.http import HEAD_BYTES, MAX_RESPONSE_BYTES, ResponseTooLarge, read_capped
from ti_pipeline.core.retry import Backoff, TryAgain, retry_after_seconds, retry_call_async
from ti_pipeline.vt_feed.broccoli.labels import map_label
from ti_pipeline.vt_feed.broccoli.tokens import GoogleTokens, TokenProvider

log = logging.getLogger(__name__)

FOUND = "found"
NOT_FOUND = "not_found"
REJECTED = "rejected"
FAILED = "failed"

GCS_ENDPOINT = "https://storage.googleapis.com"
# Statuses worth another try: throttling, server trouble, a request timeout at the server.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    """Tries per SHA1, the first included."""
    base_delay: float = 0.25
    """Backoff before the second try; doubles with every further try."""
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    """Longest ``Retry-After`` honoured (a larger one is capped, not obeyed blindly)."""
    timeout: float = 10.0
    """Seconds for one request, connect to last byte."""

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.attempts, self.base_delay, self.max_delay, self.max_retry_after)


@dataclass(slots=True)
class Lookup:
    sha1: str
    outcome: str
    http_status: int  # 0 when no HTTP answer (invalid SHA1, timeouts, resets)
    looked_up_at: float  # seconds since the epoch
    label: str | None = None
    classification: str | None = None
    known_label: bool = True
    reason: str | None = None
    attempts: int = 0
    excerpt: bytes = b""  # the start of a rejected body, for the quarantine


@dataclass
class LookupStats:
    """What the lookups took beside their outcomes: retries by cause, token refreshes."""

    retried: int = 0
    retry_reasons: Counter[str] = field(default_factory=Counter)


def parse_report(body: bytes) -> tuple[str | None, str | None]:
    """``(label, None)`` for a well-formed Broccoli object, ``(None, reason)`` otherwise."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, "malformed_json"
    if not isinstance(doc, dict):
        return None, "not_a_json_object"
    label = doc.get("classification")
    if label is None:
        return None, "missing_classification"
    if not isinstance(label, str) or not label.strip():
        return None, "classification_not_a_string"
    return label.strip(), None


def _too_large(sha1: str, exc: ResponseTooLarge, attempts: int) -> Lookup:
    return Lookup(sha1, REJECTED, 200, time.time(), reason=str(exc), attempts=attempts, excerpt=exc.head)


def _answer(sha1: str, status: int, body: bytes, attempts: int) -> Lookup:
    now = time.time()
    if status == 404:
        return Lookup(sha1, NOT_FOUND, 404, now, attempts=attempts)
    label, reason = parse_report(body)
    if reason is not None:
        return Lookup(sha1, REJECTED, status, now, reason=reason, attempts=attempts, excerpt=body[:256])
    classification, known = map_label(label)
    return Lookup(sha1, FOUND, status, now, label, classification, known, attempts=attempts)


class BroccoliClient:
    """Looks SHA1s up at one ``TI_BROCCOLI_URI``; use as ``async with BroccoliClient(uri) as client``."""

    def __init__(
        self,
        uri: str,
        *,
        policy: RetryPolicy = RetryPolicy(),
        tokens: TokenProvider | None = None,
        concurrency: int = 500,
        rng: random.Random | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        self.uri = uri
        self.policy = policy
        self._backoff = policy.backoff
        self.concurrency = concurrency
        self.max_response_bytes = max_response_bytes
        self.rng = rng or random.Random()
        self.stats = LookupStats()
        self._session = None
        self._local_root: Path | None = None
        parsed = urlparse(uri)
        if parsed.scheme == "gs":
            if not parsed.netloc:
                raise ValueError(f"no bucket in {uri!r}")
            emulator = settings.text("STORAGE_EMULATOR_HOST")
            endpoint = (emulator or GCS_ENDPOINT).rstrip("/")
            if emulator and "://" not in endpoint:
                endpoint = f"http://{endpoint}"
            prefix = parsed.path.strip("/")
            self._object_prefix = quote(f"{prefix}/" if prefix else "", safe="")
            self._url_head = f"{endpoint}/storage/v1/b/{quote(parsed.netloc, safe='')}/o/"
            self._url_tail = "?alt=media"
            self.tokens = tokens or (TokenProvider() if emulator else GoogleTokens())
        elif parsed.scheme in ("http", "https"):
            self._object_prefix = ""
            self._url_head = uri.rstrip("/") + "/"
            self._url_tail = ""
            self.tokens = tokens or TokenProvider()
        elif parsed.scheme in ("file", ""):
            self._local_root = Path(parsed.path if parsed.scheme else uri)
            self.tokens = TokenProvider()
        else:
            raise ValueError(f"unsupported Broccoli URI: {uri!r} (use gs://, http(s):// or file://)")

    def url(self, sha1: str) -> str:
        """Where one SHA1's object lives; refuses anything but 40 lower-case hex digits."""
        if keys.normalise_hex(sha1, "sha1") != sha1:
            raise keys.InvalidKey(f"not a SHA1: {sha1!r}")
        return self._url(sha1)

    def _url(self, sha1: str) -> str:
        if self._local_root is not None:
            return (self._local_root / sha1).as_uri()
        return f"{self._url_head}{self._object_prefix}{sha1}{self._url_tail}"

    async def __aenter__(self) -> BroccoliClient:
        if self._local_root is None:
            import aiohttp

            connector = aiohttp.TCPConnector(
                limit=self.concurrency, limit_per_host=self.concurrency, ttl_dns_cache=300, keepalive_timeout=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout),
                skip_auto_headers=("User-Agent",),
            )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def lookup_stream(self, sha1s: Iterable[str], sink: Callable[[Lookup], bool]) -> None:
        """Look SHA1s up, at most ``concurrency`` at a time, handing each result to ``sink`` as it ends.

        ``sink`` returns False to stop taking new SHA1s (lookups under way still finish and are sunk).
        Workers pull from one shared iterator, so a slow or retried lookup never holds up the others.
        """
        work = iter(sha1s)
        stop = False

        async def worker() -> None:
            nonlocal stop
            for sha1 in work:
                if not sink(await self.lookup(sha1)):
                    stop = True
                if stop:
                    return

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def lookup_many(self, sha1s: Sequence[str]) -> list[Lookup]:
        """Look every SHA1 up; results in input order."""
        results: dict[str, Lookup] = {}

        def keep(result: Lookup) -> bool:
            results[result.sha1] = result
            return True

        await self.lookup_stream(sha1s, keep)
        return [results[sha1] for sha1 in sha1s]

    async def lookup(self, sha1: str) -> Lookup:
        key = keys.normalise_hex(sha1, "sha1")
        if key is None or key != sha1:
            return Lookup(sha1, REJECTED, 0, time.time(), reason="invalid_sha1")
        if self._local_root is not None:
            return self._lookup_local(key)
        return await self._lookup_http(key)

    def _lookup_local(self, sha1: str) -> Lookup:
        limit = self.max_response_bytes
        try:
            with open(self._local_root / sha1, "rb") as file:
                oversized = os.fstat(file.fileno()).st_size > limit
                # Past the stat, reading at most one byte over the cap still catches a file that grew.
                body = file.read(HEAD_BYTES if oversized else limit + 1)
        except FileNotFoundError:
            return _answer(sha1, 404, b"", 1)
        if oversized or len(body) > limit:
            return _too_large(sha1, ResponseTooLarge(limit, body[:HEAD_BYTES]), 1)
        return _answer(sha1, 200, body, 1)

    async def _lookup_http(self, sha1: str) -> Lookup:
        import aiohttp

        url = self._url(sha1)  # validated by lookup()
        tries = 0

        async def once() -> Lookup:
            nonlocal tries
            tries += 1
            try:
                headers = await self.tokens.headers()
                async with self._session.get(url, headers=headers) as resp:
                    status = resp.status
                    try:
                        body = await read_capped(resp, self.max_response_bytes)
                    except ResponseTooLarge as exc:
                        if status == 200:
                            return _too_large(sha1, exc, tries)  # the same object again: not retried
                        body = b""  # an error page is not used: the connection is dropped, not drained
                    if status == 200 or status == 404:
                        return _answer(sha1, status, body, tries)
                    if status == 401:
                        self.tokens.invalidate()
                    elif status not in RETRYABLE_STATUSES:
                        return Lookup(sha1, FAILED, status, time.time(), reason=f"http_{status}", attempts=tries)
                    raise TryAgain(f"http_{status}", status, retry_after_seconds(resp.headers.get("Retry-After"), time.time()))
            except TimeoutError:
                raise TryAgain("timeout", 0) from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                raise TryAgain(f"connection:{type(exc).__name__}", 0) from None

        try:
            # Retries are logged at DEBUG only: at hundreds of lookups at once a line each would flood
            # the run's log; their counts by cause are the step's metadata (``stats``).
            return await retry_call_async(
                once, self._backoff, what=url, on_retry=self._count_retry, logger=log, level=logging.DEBUG,
                rand=self.rng.random,
            )
        except TryAgain as last:
            return Lookup(sha1, FAILED, last.status or 0, time.time(), reason=f"{last.reason} after {tries} tries",
                          attempts=tries)

    def _count_retry(self, failure: Exception, delay: float) -> None:
        self.stats.retried += 1
        self.stats.retry_reasons[str(failure)] += 1
