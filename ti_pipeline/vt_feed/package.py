"""One VT feed package → kept reports as Arrow batches, with its accounting and quarantine.

A package is bzip2: v2 packages hold a tar with one NDJSON member, v3 packages are NDJSON directly
(told apart by the first decompressed block: a tar header, else text). Any text is read as NDJSON,
whatever its first line holds (an array, a scalar, garbage): each bad line is one rejected record and
the rest of the package still reads; only binary data that is not a tar is a corrupt package.
Decompression streams in
``CHUNK_BYTES`` pieces and tar headers are read in place (no ``tarfile`` stream copies), so a worker's
memory depends on the chunk size and on the package's kept rows, never on the day.

This module is what a pool worker runs (``process_package``), so it imports only the kernel: bz2,
tar headers, msgspec and the rules. Not pyarrow, numpy, SQLAlchemy or pandas (which pyarrow imports
on first use): measured, they cost a worker ~3 CPU-seconds to import without a bytecode cache, the
kernel's own imports ~0.15. Kept rows leave the worker as plain columns
(``PackageResult.columns``, pickled: a few percent of the decompressed bytes); the step makes them
Arrow (``vt_feed/export.py``).

The decompressed stream is only ever read with ``read1``: ``BZ2File.read(n)`` gathers several pieces
and, when the data ends early, raises and drops what it had gathered, so a truncated package would
lose up to ``n`` bytes of complete lines before the damage; ``read1`` hands each piece over first.
"""

from __future__ import annotations

import bz2
import logging
import re
import resource
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import BinaryIO

from ti_pipeline.core.accounting import Accounting, QuarantineRecord
from ti_pipeline.core.failpoints import failpoint
from ti_pipeline.core.objectstore import ObjectStore, open_store
from ti_pipeline.core.retry import Backoff, retry_call
from ti_pipeline.vt_feed import records

CHUNK_BYTES = 1 << 20
# A line longer than this is not a report: it is rejected (one record) instead of being buffered without end.
MAX_LINE_BYTES = 64 << 20
EXCERPT_BYTES = 512
_BLOCK = tarfile.BLOCKSIZE
_END_OF_ARCHIVE = b"\0" * _BLOCK
# Bytes that never occur in NDJSON (JSON escapes control characters; its whitespace is \t \n \r and space).
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# A package read that fails (a dropped connection, a truncated download) is tried 4 times in all.
READ_RETRIES = Backoff(attempts=4, base=2.0, cap=30.0)

log = logging.getLogger(__name__)


class CorruptPackage(Exception):
    """The package cannot be read on: bad bz2 data, a torn tar, an unknown format."""


class SourceError(Exception):
    """Reading the object itself failed (network, permissions): not the package's fault."""


@dataclass
class PackageResult:
    name: str  # object name in the feed store
    format: str  # v2 | v3 | unknown
    accounting: Accounting = field(default_factory=Accounting)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    # Kept rows as columns in ``records.Kept`` order, each a tuple (empty when none is kept).
    columns: tuple[tuple, ...] = ()
    compressed_bytes: int = 0
    decompressed_bytes: int = 0
    corrupt: str | None = None
    peak_rss_kib: int = 0


class _CountingReader:
    """Counts compressed bytes and tells read failures apart from bad package data."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.bytes = raw, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.raw.read(size)
        except Exception as exc:
            raise SourceError(f"{type(exc).__name__}: {exc}") from exc
        self.bytes += len(data)
        return data


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read1(size)
    while len(data) < size:
        more = stream.read1(size - len(data))
        if not more:
            break
        data += more
    return data


def _tar_members(stream: BinaryIO, first_block: bytes) -> Iterator[tuple[str, Iterator[bytes]]]:
    """(name, content chunks) of each regular member of a tar read sequentially from ``stream``.

    Other entries (directories, pax and GNU long-name headers) are skipped with their content.
    """
    block = first_block
    while True:
        if len(block) < _BLOCK:
            raise CorruptPackage("tar: truncated header")
        if block == _END_OF_ARCHIVE:
            return  # end-of-archive marker
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise CorruptPackage(f"tar: {exc}") from exc
        padded = -(-info.size // _BLOCK) * _BLOCK
        if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            remaining = [info.size]
            yield info.name, _limited(stream, remaining)
            _skip(stream, remaining[0] + padded - info.size)
        else:
            _skip(stream, padded)
        block = _read_exact(stream, _BLOCK)
        if not block:
            return  # archive without end marker: accepted, every member was complete


def _limited(stream: BinaryIO, remaining: list[int]) -> Iterator[bytes]:
    while remaining[0] > 0:
        data = stream.read1(min(CHUNK_BYTES, remaining[0]))
        if not data:
            raise CorruptPackage(f"tar: member truncated, {remaining[0]} bytes missing")
        remaining[0] -= len(data)
        yield data


def _skip(stream: BinaryIO, size: int) -> None:
    while size > 0:
        data = stream.read1(min(CHUNK_BYTES, size))
        if not data:
            raise CorruptPackage("tar: truncated")
        size -= len(data)


def _chunks(stream: BinaryIO, first: bytes) -> Iterator[bytes]:
    if first:
        yield first
    while data := stream.read1(CHUNK_BYTES):
        yield data


class _LineParser:
    """Decodes blocks of whole lines and applies the rules; keeps line offsets only for rejects."""

    def __init__(self, source: str, acc: Accounting, quarantine: list[QuarantineRecord], kept: list, rules: records.Rules):
        self.source, self.acc, self.quarantine, self.kept, self.rules = source, acc, quarantine, kept, rules
        self.decoded = 0  # bytes of lines handed to the decoder

    def feed(self, chunks: Iterator[bytes]) -> None:
        carry = b""
        skipping = False  # inside a line already rejected as too long: drop it up to its newline
        for chunk in chunks:
            if skipping:
                end = chunk.find(b"\n") + 1
                self.decoded += end or len(chunk)
                if not end:
                    continue
                skipping, chunk = False, chunk[end:]
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                if len(carry) > MAX_LINE_BYTES:
                    self._reject_line(carry, self.decoded, records.REJECT_LINE_TOO_LONG)
                    self.decoded += len(carry)
                    carry, skipping = b"", True
                continue
            self._block(memoryview(data)[:cut] if cut < len(data) else data)
            carry = data[cut:]
        if carry:
            self._block(carry)

    def _block(self, block) -> None:
        offset = self.decoded
        self.decoded += len(block)
        try:
            reports = records.DECODER.decode_lines(block)
        except (records.DecodeError, records.ValidationError):
            self._line_by_line(bytes(block), offset)
            return
        if len(reports) != _record_lines(block):
            # decode_lines reads a stream of JSON values, not lines: two reports on one line (or one
            # over two lines) would shift every later line. Line by line, each line is one record.
            self._line_by_line(bytes(block), offset)
            return
        spans: list[tuple[int, int]] = []  # computed on the first reject of the block only
        for index, report in enumerate(reports):
            self._apply(report, lambda i=index: self._line_at(block, spans, i), offset)

    def _apply(self, report: records.Report, line: Callable[[], tuple[int, bytes]], offset: int) -> None:
        acc = self.acc
        acc.read += 1
        verdict = records.evaluate(report, acc, self.rules)
        if type(verdict) is records.Kept:
            self.kept.append(verdict)
            return
        kind, name = verdict
        if kind == "filtered":
            acc.filter(name)
        else:
            start, raw = line()
            acc.reject(name)
            self.quarantine.append(QuarantineRecord(self.source, name, offset + start, raw[:EXCERPT_BYTES].hex()))

    @staticmethod
    def _line_at(block, spans: list[tuple[int, int]], index: int) -> tuple[int, bytes]:
        if not spans:
            data = bytes(block)
            start = 0
            for line in data.split(b"\n"):
                if line.strip():
                    spans.append((start, start + len(line)))
                start += len(line) + 1
        start, end = spans[index]
        return start, bytes(block[start:end])

    def _line_by_line(self, data: bytes, offset: int) -> None:
        start = 0
        for line in data.split(b"\n"):
            here = start
            start += len(line) + 1
            if not line.strip():
                continue
            try:
                report = records.DECODER.decode(line)
            except records.ValidationError as exc:
                self._reject_line(line, offset + here, records.validation_reason(exc), str(exc))
                continue
            except records.DecodeError as exc:
                self._reject_line(line, offset + here, records.REJECT_MALFORMED_JSON, str(exc))
                continue
            self._apply(report, lambda h=here, raw=line: (h, raw), offset)

    def _reject_line(self, raw: bytes, offset: int, reason: str, detail: str = "") -> None:
        self.acc.read += 1
        self.acc.reject(reason)
        text = f"{reason}: {detail}" if detail else reason
        self.quarantine.append(QuarantineRecord(self.source, text[:255], offset, raw[:EXCERPT_BYTES].hex()))


def _record_lines(block) -> int:
    """Lines of ``block`` that hold more than blanks: the records it is (blank lines are skipped)."""
    return sum(1 for line in bytes(block).split(b"\n") if line.strip())


def read_package(raw: BinaryIO, name: str, source: str, rules: records.Rules) -> PackageResult:
    """Decompress, parse and filter one package; a corrupt package keeps the rows read before the damage.

    ``name`` is the object name (the ``source_package`` column), ``source`` its URL (quarantine rows),
    ``rules`` the run's (``records.rules``: its clock, the column limits).
    A truncated package keeps every complete line of the bzip2 blocks it holds whole; the unreadable
    remainder (the torn line and what followed) counts as one rejected record (``corrupt_package``)
    so the balance still holds, and is quarantined with the decompressed offset where it broke.
    """
    result = PackageResult(name=name, format="unknown")
    counting = _CountingReader(raw)
    kept: list[records.Kept] = []
    parser = _LineParser(source, result.accounting, result.quarantine, kept, rules)
    stream = bz2.BZ2File(counting)
    try:
        head = _read_exact(stream, _BLOCK)
        # A tar: a ustar header, or the end-of-archive block first (a tar with no member, no reports).
        if len(head) == _BLOCK and (head[257:262] == b"ustar" or head == _END_OF_ARCHIVE):
            result.format = "v2"
            for _member, chunks in _tar_members(stream, head):
                parser.feed(chunks)
        elif not _BINARY.search(head):
            result.format = "v3"
            parser.feed(_chunks(stream, head))
        else:
            raise CorruptPackage("neither a tar nor NDJSON")
    except SourceError:
        raise
    except (OSError, EOFError, CorruptPackage) as exc:
        reason = str(exc) or type(exc).__name__
        result.corrupt = reason
        result.accounting.read += 1
        result.accounting.reject(records.REJECT_CORRUPT_PACKAGE)
        result.quarantine.append(
            QuarantineRecord(source, f"{records.REJECT_CORRUPT_PACKAGE}: {reason}"[:255], stream.tell(), "")
        )
    finally:
        result.decompressed_bytes = stream.tell()
        stream.close()
    result.compressed_bytes = counting.bytes
    result.columns = tuple(zip(*kept, strict=True))
    result.peak_rss_kib = peak_rss_kib()
    return result


def peak_rss_kib() -> int:
    """This process's peak RSS: Linux's ``VmHWM`` where there is one, since ``ru_maxrss`` survives exec
    and so starts a spawned worker at its parent's peak."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@lru_cache(maxsize=4)
def _store(uri: str) -> ObjectStore:
    return open_store(uri)


def process_package(feed_uri: str, name: str, rules: records.Rules) -> PackageResult:
    """Worker task: one package from the feed store; read failures retried, then raised naming the object."""
    store = _store(feed_uri)
    url = store.url_of(name)

    def read() -> PackageResult:
        try:
            raw = store.open_read(name)
        except Exception as exc:
            raise SourceError(f"{type(exc).__name__}: {exc}") from exc
        with raw:
            result = read_package(raw, name, url, rules)
        failpoint("vt_export.package_decompressed")
        return result

    try:
        return retry_call(
            read, READ_RETRIES, what=f"reading {url}", retry_on=lambda exc: isinstance(exc, SourceError), logger=log
        )
    except SourceError as exc:
        raise SourceError(f"cannot read {url}: {exc}") from exc
