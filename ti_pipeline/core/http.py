"""What the HTTP clients (Broccoli, Malpedia) share besides their retries: a bounded read of a body."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

MAX_RESPONSE_BYTES = 1 << 20
"""Default cap on one response body (1 MiB), counted after decompression."""
READ_CHUNK_BYTES = 64 << 10
HEAD_BYTES = 256
"""How much of a refused body is kept, to show what it was."""


class ResponseTooLarge(Exception):
    """A body over the cap, refused before it was read whole; ``head`` is its start (``HEAD_BYTES`` at most)."""

    def __init__(self, limit: int, head: bytes = b""):
        super().__init__(f"response_too_large: more than {limit} bytes")
        self.limit, self.head = limit, head


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or ``ResponseTooLarge`` as soon as it is known to exceed ``limit`` bytes.

    A larger ``Content-Length`` is refused before any byte is read, and an uncompressed body of a
    declared size within the cap is read in one go (aiohttp reads no more than the declared length);
    otherwise the (transparently decompressed) stream is read a chunk at a time, so neither a missing
    length nor a gzip bomb makes memory grow past ``limit`` plus one chunk.
    """
    declared = response.content_length
    if declared is not None and declared > limit:
        raise ResponseTooLarge(limit)
    if declared is not None and "Content-Encoding" not in response.headers:
        # An identity body of a declared size within the cap: one read, the common small answer's path.
        return await response.read()
    chunks: list[bytes] = []
    size = 0
    head = b""
    async for chunk in response.content.iter_chunked(READ_CHUNK_BYTES):
        size += len(chunk)
        head += chunk[: HEAD_BYTES - len(head)]
        if size > limit:
            raise ResponseTooLarge(limit, head)
        chunks.append(chunk)
    return b"".join(chunks)
