"""Decode and transform blocks of a dump file in a process pool, with bounded memory.

The reading process cuts blocks (I/O bound); workers decode and apply the collection's rule (CPU
bound) and send back rows grouped by table. At most ``2 x workers`` blocks are in flight, so memory
stays flat whatever the file's size, and results come back in file order (deterministic writes).
A block of a local, uncompressed file goes to its worker as a ``BlockSlice`` (where it is, and the
documents' offsets the cut found), which the worker reads from the file itself (one ``pread``, 0.06
CPU-s per 256 MB) instead of the block being pickled, piped in 64 KiB pieces and unpickled. A stream
(GCS, gzip) sends the bytes. With the worker's kept heap (``_keep_freed_heap``) this took the pool's
CPU beyond the in-process kernel from ~1.3 to ~0.95 CPU-s per 256 MB (bench/bson_dump.py, 2 workers).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import bson
import numpy as np

from ti_pipeline.core.accounting import Accounting, QuarantineRecord
from ti_pipeline.core.procpool import results_in_order, spawn_pool
from ti_pipeline.sage_dump.bson_stream import (
    CODEC,
    Block,
    BlockSlice,
    Corrupt,
    GzipStream,
    LocalFile,
    iter_blocks,
)
from ti_pipeline.sage_dump.rules import RULES, Filtered, Rejected, RuleContext
from ti_pipeline.sage_dump.screen import SCREENS

# Raw bytes kept per quarantined document (hex): enough to identify and usually to replay it.
EXCERPT_BYTES = 2048


@dataclass
class BlockResult:
    rows: dict[str, list[dict]] = field(default_factory=dict)
    accounting: Accounting = field(default_factory=Accounting)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    bytes_read: int = 0


def transform_block(collection: str, source: str, block: Block, ctx: RuleContext) -> BlockResult:
    """Apply the collection's rule to every document of one block.

    The big collections are screened first (``screen.SCREENS``): a document the rule filters on its
    top-level fields alone is counted without being decoded. Every other document is decoded with
    ``bson.decode`` and given to the rule, one at a time: measured 2x cheaper per byte than
    ``decode_all`` over a whole block, and a bad document costs only itself."""
    rule = RULES[collection]
    data = block.data
    result = BlockResult(bytes_read=len(data))
    acc = result.accounting
    rows = result.rows
    starts = np.frombuffer(block.starts, np.int64)
    ends = np.append(starts[1:], len(data))
    acc.read += len(starts)
    decode = range(len(starts))
    screen = SCREENS.get(collection)
    if screen is not None:
        outcome = screen(data, starts, ends, ctx)
        for rule_name, count in zip(screen.outcomes[1:], np.bincount(outcome, minlength=len(screen.outcomes))[1:], strict=True):
            if count:
                acc.filter(rule_name, int(count))
        decode = np.flatnonzero(outcome == 0).tolist()
    view = memoryview(data)
    starts_at, ends_at = starts.tolist(), ends.tolist()
    for i in decode:
        start, end = starts_at[i], ends_at[i]
        try:
            doc = bson.decode(view[start:end], CODEC)
        except Exception as exc:  # noqa: BLE001 - any decode failure is a quarantined document
            reason = f"undecodable_document: {exc}"[:255]
            acc.reject("undecodable_document")
        else:
            try:
                produced = rule(doc, ctx)
            except Filtered as f:
                acc.filter(f.rule)
                continue
            except Rejected as r:
                reason = r.reason
                acc.reject(reason)
            else:
                acc.written += 1
                for table, row in produced:
                    rows.setdefault(table, []).append(row)
                continue
        result.quarantine.append(QuarantineRecord(source, reason, block.offset + start, data[start:end][:EXCERPT_BYTES].hex()))
    return result


def pool_transform(collection: str, source: str, item: Block | BlockSlice, ctx: RuleContext) -> BlockResult:
    """What a pool worker runs for one block: ``transform_block`` of the block sent, or of the slice it
    reads from the local file itself."""
    return transform_block(collection, source, item.read() if isinstance(item, BlockSlice) else item, ctx)


# glibc's mallopt parameters: freed memory kept at the top of the heap, and the size above which an
# allocation gets its own mapping (the most glibc allows).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEPT_HEAP_BYTES, OWN_MAPPING_BYTES = 128 << 20, 32 << 20


def _keep_freed_heap() -> None:
    """A pool worker's setup: keep the heap a block used for the next one. By default glibc maps each
    multi-MB buffer (a block, the screen's padded copy) afresh or trims it off the heap when freed, so
    every block faulted its pages in again (~2,000 page faults a 4 MiB block, a tenth of a worker's
    CPU in a VM, measured). A worker's heap stays at its largest block's working set, which the block
    size bounds, not the file's. Without glibc (no ``mallopt``) nothing changes."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, OWN_MAPPING_BYTES)
    mallopt(_M_TRIM_THRESHOLD, KEPT_HEAP_BYTES)


def corrupt_result(source: str, corrupt: Corrupt) -> BlockResult:
    result = BlockResult(bytes_read=corrupt.unread_bytes)
    result.accounting.read += 1
    result.accounting.reject(corrupt.reason.split(":")[0])
    result.quarantine.append(
        QuarantineRecord(
            source,
            f"{corrupt.reason} ({corrupt.unread_bytes} bytes not readable)",
            corrupt.offset,
            corrupt.excerpt.hex(),
        )
    )
    return result


def process_stream(
    stream: BinaryIO | GzipStream,
    collection: str,
    source: str,
    ctx: RuleContext,
    *,
    workers: int,
    block_bytes: int,
) -> Iterator[BlockResult]:
    """Results of every block of ``stream`` in file order; ``workers`` 1 decodes in this process, 0 one
    per core (the defaults are ``load.DumpOptions``')."""
    workers = workers or os.cpu_count() or 1
    blocks = iter_blocks(stream, block_bytes)
    if workers == 1:
        for item in blocks:
            if isinstance(item, Corrupt):
                yield corrupt_result(source, item)
            else:
                yield transform_block(collection, source, item, ctx)
        return
    local = LocalFile.of(stream)
    with spawn_pool(workers, _keep_freed_heap) as pool:
        submissions = (
            corrupt_result(source, item)
            if isinstance(item, Corrupt)
            else pool.submit(pool_transform, collection, source, item if local is None else local.slice(item), ctx)
            for item in blocks
        )
        yield from results_in_order(submissions, 2 * workers)
