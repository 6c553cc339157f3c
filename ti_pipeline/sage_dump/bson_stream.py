"""Cut a mongodump stream into blocks of whole BSON documents, at exact boundaries.

A dump file is concatenated documents, each starting with its little-endian int32 length and ending
with a NUL byte. Boundaries come from those lengths alone; a length that cannot be right stops the
file with a ``Corrupt`` marker rather than guessing where the next document starts. A compressed
file (``GzipStream``) that is damaged ends the same way, after every whole document before the damage.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from bson.codec_options import CodecOptions

MIN_DOCUMENT = 5
# MongoDB's document limit is 16 MiB; mongodump adds nothing to it.
MAX_DOCUMENT = 16 * 1024 * 1024 + 16 * 1024
_LENGTH = struct.Struct("<i")
_GZIP = 16 + zlib.MAX_WBITS  # a gzip header and trailer around deflate data
_GZIP_MAGIC = b"\x1f\x8b"
# How a document decodes: plain dicts, naive UTC datetimes as in the dump, bad UTF-8 replaced.
CODEC = CodecOptions(tz_aware=False, unicode_decode_error_handler="replace")


@dataclass(frozen=True)
class Block:
    offset: int  # byte offset of the first document in the (decompressed) file
    data: bytes  # whole documents only
    documents: int
    starts: array  # each document's offset in ``data`` (found while cutting, so no worker walks them again)


class FileChanged(RuntimeError):
    """A local dump file changed between the cut and a worker's read of one of its blocks."""


@dataclass(frozen=True)
class LocalFile:
    """A local, uncompressed dump file being read: where it is and what it was when the cut opened it
    (device, inode, size, mtime), and the file offset of the stream's first byte."""

    path: str
    identity: tuple[int, int, int, int]
    base: int

    @classmethod
    def of(cls, stream: object) -> LocalFile | None:
        """The file behind ``stream`` when it is a regular file opened by path (``LocalStore.open_read``);
        None for anything else (a GCS download, a gzip stream, a pipe, memory)."""
        if not isinstance(stream, io.BufferedReader) or not isinstance(stream.raw, io.FileIO):
            return None
        name = stream.name
        if not isinstance(name, str):
            return None
        try:
            st = os.fstat(stream.fileno())
            base = stream.tell()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return cls(os.path.abspath(name), _identity(st), base)

    def slice(self, block: Block) -> BlockSlice:
        return BlockSlice(self, block.offset, len(block.data), block.documents, block.starts)


@dataclass(frozen=True)
class BlockSlice:
    """A block named by where it is in a ``LocalFile``, not by its bytes: what a worker is sent for a
    local file, which it reads itself (``read``), so the block is not copied through a pipe twice."""

    file: LocalFile
    offset: int  # of the first document, from the stream's start (as ``Block.offset``)
    length: int
    documents: int
    starts: array

    def read(self) -> Block:
        """The block's bytes, read from the file; raises ``FileChanged`` when the file is not the one
        cut (identity) or the bytes read do not hold the documents the cut found there (their
        lengths and terminating NULs), so the boundaries a worker decodes are always the cut's."""
        import numpy as np

        with open(self.file.path, "rb", buffering=0) as f:
            if _identity(os.fstat(f.fileno())) != self.file.identity:
                raise FileChanged(f"{self.file.path} changed while it was read")
            data = _pread(f.fileno(), self.length, self.file.base + self.offset)
        starts = np.frombuffer(self.starts, np.int64)
        ends = np.append(starts[1:], len(data))
        if len(data) != self.length or (
            len(starts)
            and not (
                (np.ndarray((len(data) - 3,), "<i4", data, 0, (1,))[starts] == ends - starts).all()
                and not np.frombuffer(data, np.uint8)[ends - 1].any()
            )
        ):
            raise FileChanged(f"{self.file.path} changed while it was read (at byte {self.file.base + self.offset})")
        return Block(self.offset, data, self.documents, self.starts)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _pread(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length and (more := os.pread(fd, length - got, offset + got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


@dataclass(frozen=True)
class Corrupt:
    """Bytes at ``offset`` that are not a whole document; nothing after them in the file is read.

    ``unread_bytes``: the bytes from ``offset`` on that were not read as documents, plus, when the
    compressed file itself is damaged, its compressed bytes from the damage on (they have no
    decompressed length)."""

    offset: int
    reason: str
    excerpt: bytes
    unread_bytes: int


class UnreadableStream(Exception):
    """The stream cannot go on (a damaged compressed file): ``reason`` for the quarantine, and how
    many bytes of the source were left unread."""

    def __init__(self, reason: str, unread_bytes: int):
        super().__init__(reason)
        self.reason = reason
        self.unread_bytes = unread_bytes


class GzipStream:
    """The decompressed bytes of a gzip file (one or more members), read in bounded pieces.

    ``gzip.GzipFile`` raises on damage and loses what it decoded in that call; here a file that is not
    gzip (``not_gzip``), ends inside a member (``truncated_gzip``) or holds corrupt deflate data
    (``corrupt_gzip``) raises ``UnreadableStream`` only after every byte decoded before the damage was
    returned, so the whole documents ahead of it are kept, as for a torn ``.bson``.
    """

    def __init__(self, raw: BinaryIO, chunk_bytes: int = 1 << 16):
        self._raw = raw
        self._chunk_bytes = chunk_bytes
        self._inflate = zlib.decompressobj(_GZIP)
        self._pending = b""  # compressed bytes read, not yet decoded
        self._position = 0  # compressed offset of _pending[0]
        self._in_member = False
        self._error: UnreadableStream | None = None
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        size = size if size > 0 else 1 << 20
        out = bytearray()
        while len(out) < size and not self._eof and self._error is None:
            out += self._decode(size - len(out))
        if out:
            return bytes(out)
        if self._error is not None:
            raise self._error
        return b""

    def _decode(self, limit: int) -> bytes:
        if not self._pending:
            self._pending = self._raw.read(self._chunk_bytes)
            if not self._pending:
                if self._in_member:
                    self._fail("truncated_gzip: the file ends inside a gzip member", 0)
                self._eof = True
                return b""
            if self._position == 0 and not self._pending.startswith(_GZIP_MAGIC[: len(self._pending)]):
                self._fail("not_gzip: no gzip magic bytes", len(self._pending))
                return b""
        if self._inflate.eof:  # the member ended: another member follows, or zero padding
            if not self._pending.strip(b"\0"):
                self._position += len(self._pending)
                self._pending = b""
                return b""
            self._inflate = zlib.decompressobj(_GZIP)
        data, before = self._pending, self._inflate.copy()
        try:
            out = self._inflate.decompress(data, limit)
        except zlib.error as exc:
            return self._salvage(before, data, str(exc))
        left = self._inflate.unconsumed_tail or self._inflate.unused_data
        self._position += len(data) - len(left)
        self._pending = left
        self._in_member = not self._inflate.eof
        return out

    def _salvage(self, inflate, data: bytes, message: str) -> bytes:
        """Re-decode the failing input one byte at a time, to return all that precedes the damage."""
        out = bytearray()
        at = len(data)
        for i in range(len(data)):
            try:
                out += inflate.decompress(data[i : i + 1])
            except zlib.error:
                at = i
                break
        self._position += at
        self._fail(f"corrupt_gzip: {message}", len(data) - at)
        return bytes(out)

    def _fail(self, reason: str, unread_in_buffer: int) -> None:
        unread = unread_in_buffer
        while chunk := self._raw.read(8 << 20):
            unread += len(chunk)
        self._error = UnreadableStream(f"{reason}, at compressed byte {self._position}", unread)
        self._pending = b""


def iter_blocks(stream: BinaryIO | GzipStream, block_bytes: int = 4 << 20) -> Iterator[Block | Corrupt]:
    """Blocks of about ``block_bytes`` of whole documents, then at most one ``Corrupt``."""
    pending = b""
    offset = 0  # file offset of pending[0]
    eof = False
    damage: UnreadableStream | None = None
    while not eof:
        try:
            data = stream.read(block_bytes)
        except UnreadableStream as exc:
            data, damage = b"", exc
        eof = not data
        buf = pending + data if pending else data
        pos = 0
        starts = array("q")
        end = len(buf)
        # The one loop of the reading process that runs per document: names bound locally.
        unpack, mark, least, most = _LENGTH.unpack_from, starts.append, MIN_DOCUMENT, MAX_DOCUMENT
        while pos + 4 <= end:
            (length,) = unpack(buf, pos)
            if not least <= length <= most:
                yield from _flush(buf, pos, starts, offset)
                yield _corrupt(stream, buf, pos, offset, f"invalid_document_length:{length}")
                return
            next_pos = pos + length
            if next_pos > end:
                break
            if buf[next_pos - 1]:
                yield from _flush(buf, pos, starts, offset)
                yield _corrupt(stream, buf, pos, offset, "missing_document_terminator")
                return
            mark(pos)
            pos = next_pos
        yield from _flush(buf, pos, starts, offset)
        offset += pos
        pending = buf[pos:]
    if damage is not None:
        yield Corrupt(offset, damage.reason, pending[:512], len(pending) + damage.unread_bytes)
    elif pending:
        yield Corrupt(offset, "torn_document", pending[:512], len(pending))


def _flush(buf: bytes, pos: int, starts: array, offset: int) -> Iterator[Block]:
    if starts:
        yield Block(offset, buf[:pos], len(starts), starts)


def _corrupt(stream: BinaryIO | GzipStream, buf: bytes, pos: int, offset: int, reason: str) -> Corrupt:
    rest = len(buf) - pos
    try:
        while chunk := stream.read(8 << 20):
            rest += len(chunk)
    except UnreadableStream as exc:
        rest += exc.unread_bytes
    return Corrupt(offset + pos, reason, buf[pos : pos + 512], rest)
