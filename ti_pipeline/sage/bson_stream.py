"""Cut a mongodump stream into blocks of whole BSON documents, at exact boundaries.

A dump file is concatenated documents, each starting with its little-endian int32 length and ending
with a NUL byte. Boundaries come from those lengths alone; a length that cannot be right stops the
file with a ``Corrupt`` marker rather than guessing where the next document starts.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

MIN_DOCUMENT = 5
# MongoDB's document limit is 16 MiB; mongodump adds nothing to it.
MAX_DOCUMENT = 16 * 1024 * 1024 + 16 * 1024
_LENGTH = struct.Struct("<i")


@dataclass(frozen=True)
class Block:
    offset: int  # byte offset of the first document in the (decompressed) file
    data: bytes  # whole documents only
    documents: int


@dataclass(frozen=True)
class Corrupt:
    """Bytes at ``offset`` that are not a whole document; nothing after them in the file is read."""

    offset: int
    reason: str
    excerpt: bytes
    unread_bytes: int


def iter_blocks(stream: BinaryIO, block_bytes: int = 4 << 20) -> Iterator[Block | Corrupt]:
    """Blocks of about ``block_bytes`` of whole documents, then at most one ``Corrupt``."""
    pending = b""
    offset = 0  # file offset of pending[0]
    eof = False
    while not eof:
        data = stream.read(block_bytes)
        eof = not data
        buf = pending + data if pending else data
        pos, count = 0, 0
        end = len(buf)
        while pos + 4 <= end:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if length < MIN_DOCUMENT or length > MAX_DOCUMENT:
                yield from _flush(buf, pos, count, offset)
                yield _corrupt(stream, buf, pos, offset, f"invalid_document_length:{length}")
                return
            if pos + length > end:
                break
            if buf[pos + length - 1] != 0:
                yield from _flush(buf, pos, count, offset)
                yield _corrupt(stream, buf, pos, offset, "missing_document_terminator")
                return
            pos += length
            count += 1
        yield from _flush(buf, pos, count, offset)
        offset += pos
        pending = buf[pos:]
    if pending:
        yield Corrupt(offset, "torn_document", pending[:512], len(pending))


def _flush(buf: bytes, pos: int, count: int, offset: int) -> Iterator[Block]:
    if count:
        yield Block(offset, buf[:pos], count)


def _corrupt(stream: BinaryIO, buf: bytes, pos: int, offset: int, reason: str) -> Corrupt:
    rest = len(buf) - pos
    while chunk := stream.read(8 << 20):
        rest += len(chunk)
    return Corrupt(offset + pos, reason, buf[pos : pos + 512], rest)


def document_offsets(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each document of a ``Block``'s data."""
    pos = 0
    while pos < len(data):
        (length,) = _LENGTH.unpack_from(data, pos)
        yield pos, pos + length
        pos += length
