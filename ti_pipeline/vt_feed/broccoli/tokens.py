"""Authorization headers for the GCS JSON API: an OAuth token from google-auth, refreshed before expiry.

One provider serves every concurrent lookup of a process: the token is cached and refreshed once
(under a lock, in a thread so the event loop keeps serving responses) when it is within
``refresh_margin`` seconds of expiring, or when the server answered 401. The token itself never
leaves this module except inside the header handed to the HTTP session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC

READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
# google-auth reports no expiry for some credential types; assume the usual hour minus a margin.
ASSUMED_LIFETIME = 3300.0


class TokenProvider:
    """No authorization at all: the GCS emulator, and plain http(s) or file stores."""

    refreshes = 0

    async def headers(self) -> Mapping[str, str]:
        return {}

    def invalidate(self) -> None:
        """The server refused the current token (401): fetch a new one before the next request."""


class GoogleTokens(TokenProvider):
    """Bearer tokens from google-auth credentials (Application Default Credentials unless given)."""

    def __init__(self, credentials=None, *, refresh_margin: float = 300.0, clock: Callable[[], float] = time.time):
        if credentials is None:
            import google.auth

            credentials, _project = google.auth.default(scopes=[READ_ONLY_SCOPE])
        self.credentials = credentials
        self.refresh_margin = refresh_margin
        self.clock = clock
        self.refreshes = 0
        self._headers: dict[str, str] = {}
        self._expires_at = 0.0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _fresh(self) -> bool:
        return bool(self._headers) and self.clock() < self._expires_at - self.refresh_margin

    async def headers(self) -> Mapping[str, str]:
        if self._fresh():
            return self._headers
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            if not self._fresh():
                await asyncio.to_thread(self._refresh)
        return self._headers

    def invalidate(self) -> None:
        self._expires_at = 0.0

    def _refresh(self) -> None:
        from google.auth.transport.requests import Request

        self.credentials.refresh(Request())
        expiry = self.credentials.expiry  # naive UTC datetime, or None
        self._expires_at = expiry.replace(tzinfo=UTC).timestamp() if expiry else self.clock() + ASSUMED_LIFETIME
        self._headers = {"Authorization": f"Bearer {self.credentials.token}"}
        self.refreshes += 1
