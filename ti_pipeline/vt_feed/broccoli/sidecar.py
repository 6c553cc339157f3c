"""The classification sidecar of one VT export day: what to look up, checkpoints, and publishing.

Layout, manifest and reading are ``ti_pipeline.core.exports``: the export day's SHA1s come from the
parts listed in ``vt_file_reports/date=D/_SUCCESS``; the sidecar is
``broccoli_classifications/date=D/part-NNNNN.parquet`` plus its own ``_SUCCESS`` published last.
While a day is being looked up, every finished batch of lookups is saved as a checkpoint part under
``broccoli_classifications-checkpoints/date=D/`` so a run that fails (a lookup that still fails after
its retries, a killed process) loses none of its successes: the re-run starts from the previous
sidecar plus the checkpoints and looks up only what is missing.
Publishing writes new part names (indices after the previous ones), then swaps the manifest in one
atomic write, then deletes the superseded parts and the checkpoints, so a reader sees the old
sidecar or the new one, never a mix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ti_pipeline.core import keys
from ti_pipeline.core.exports import (
    BROCCOLI_CLASSIFICATIONS,
    BROCCOLI_CLASSIFICATIONS_DATASET,
    VT_FILE_REPORTS_DATASET,
    DayExport,
    Manifest,
    check_parts,
    iter_batches,
    part_index,
    partition_prefix,
    publish_manifest,
    read_manifest,
    require_export,
    write_table_part,
)
from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.vt_feed.broccoli.client import FOUND, NOT_FOUND, REJECTED, Lookup

CHECKPOINT_DATASET = "broccoli_classifications-checkpoints"

# A checkpoint keeps every finished outcome: sidecar rows (found, not found) and rejected lookups
# with their reason, so a re-run neither repeats them nor forgets to quarantine them.
CHECKPOINT_SCHEMA = BROCCOLI_CLASSIFICATIONS.append(pa.field("outcome", pa.string(), nullable=False)).append(
    pa.field("reason", pa.string())
)
SHA1 = pa.binary(20)
BATCH_ROWS = 65536


@dataclass(frozen=True)
class ExportSha1s:
    sha1s: pa.Array  # distinct, non-null, fixed_size_binary(20), sorted
    rows: int
    rows_without_sha1: int
    parts: int


def _read_parts(store: ObjectStore, export: DayExport, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The listed parts' columns, once every part is checked to be the one its manifest recorded."""
    check_parts(store, export)
    for part in export.parts:
        for _, batch in iter_batches(store, part, BATCH_ROWS, columns):
            yield batch


def export_sha1s(store: ObjectStore, day: date | str) -> ExportSha1s:
    """The distinct SHA1s of a complete export day, read column-only, part by part."""
    export = require_export(store, VT_FILE_REPORTS_DATASET, day)
    uniques: list[pa.Array] = []
    rows = nulls = 0
    for batch in _read_parts(store, export, ["sha1"]):
        column = batch.column(0)
        rows += len(column)
        nulls += column.null_count
        uniques.append(pc.unique(column.drop_null()))
    distinct = pc.unique(pa.chunked_array(uniques, type=SHA1)) if uniques else pa.array([], SHA1)
    distinct = pc.take(distinct, pc.sort_indices(distinct))
    return ExportSha1s(distinct, rows, nulls, len(export.parts))


def iter_hex(sha1s: pa.Array, chunk: int = 10_000) -> Iterator[str]:
    """Hex strings of binary SHA1s, converted a chunk at a time (never the whole day as Python objects)."""
    for start in range(0, len(sha1s), chunk):
        for value in sha1s.slice(start, chunk).to_pylist():
            yield value.hex()


def lookups_table(lookups: Sequence[Lookup]) -> pa.Table:
    """Finished lookups (found, not found, rejected) as checkpoint rows."""
    return pa.table(
        {
            "sha1": pa.array([bytes.fromhex(x.sha1) for x in lookups], SHA1),
            "classification": [x.classification for x in lookups],
            "label": [x.label for x in lookups],
            "http_status": pa.array([x.http_status for x in lookups], pa.int16()),
            "looked_up_at": pa.array(
                [datetime.fromtimestamp(x.looked_up_at, UTC) for x in lookups], pa.timestamp("us", tz="UTC")
            ),
            "outcome": [x.outcome for x in lookups],
            "reason": [x.reason for x in lookups],
        },
        schema=CHECKPOINT_SCHEMA,
    )


def checkpoint_names(store: ObjectStore, day: date | str) -> list[str]:
    prefix = partition_prefix(CHECKPOINT_DATASET, day) + "/"
    return sorted(info.name for info in store.list(prefix) if info.name.endswith(".parquet"))


def write_checkpoint(store: ObjectStore, day: date | str, lookups: Sequence[Lookup]) -> str | None:
    """Persist finished lookups. Failed ones are left out (they are what a re-run redoes), and so is a
    value that is not a SHA1 at all (it cannot come from the export and is rejected again for free)."""
    done = [x for x in lookups if x.outcome in (FOUND, NOT_FOUND, REJECTED) and keys.normalise_hex(x.sha1, "sha1") == x.sha1]
    if not done:
        return None
    existing = checkpoint_names(store, day)
    index = part_index(existing[-1]) + 1 if existing else 0
    return write_table_part(store, CHECKPOINT_DATASET, day, index, lookups_table(done)).name


def clear_checkpoints(store: ObjectStore, day: date | str) -> None:
    for name in checkpoint_names(store, day):
        store.delete(name)


def _sidecar_as_checkpoint(table: pa.Table) -> pa.Table:
    table = table.select(BROCCOLI_CLASSIFICATIONS.names).cast(BROCCOLI_CLASSIFICATIONS)
    outcome = pc.if_else(pc.equal(table["http_status"], 404), NOT_FOUND, FOUND)
    table = table.append_column("outcome", outcome).append_column("reason", pa.nulls(len(table), pa.string()))
    return table.cast(CHECKPOINT_SCHEMA)


def previous_results(store: ObjectStore, day: date | str, wanted: pa.Array) -> pa.Table:
    """Finished lookups of SHA1s in ``wanted``: the published sidecar, overlaid by later checkpoints."""
    tables = []
    published = read_manifest(store, BROCCOLI_CLASSIFICATIONS_DATASET, day)
    if published is not None:
        batches = list(_read_parts(store, published, BROCCOLI_CLASSIFICATIONS.names))
        tables.append(_sidecar_as_checkpoint(pa.Table.from_batches(batches, BROCCOLI_CLASSIFICATIONS)))
    for name in checkpoint_names(store, day):
        with store.open_read(name) as raw:
            tables.append(pq.read_table(raw).cast(CHECKPOINT_SCHEMA))
    if not tables:
        return CHECKPOINT_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    table = table.filter(pc.is_in(table["sha1"], value_set=wanted))
    return latest_per_sha1(table)


def latest_per_sha1(table: pa.Table) -> pa.Table:
    """One row per SHA1: the last one in table order (later checkpoints win)."""
    if len(table) == 0:
        return table
    indexed = table.append_column("_row", pa.array(range(len(table)), pa.int64()))
    keep = indexed.group_by("sha1", use_threads=False).aggregate([("_row", "max")])["_row_max"]
    return table.take(pc.sort_indices(keep))


def publish(
    store: ObjectStore, day: date | str, results: pa.Table, *, rows_per_part: int = 1_000_000, extra: dict | None = None
) -> Manifest:
    """Write the sidecar (found and not-found rows, by SHA1) under new part numbers and swap its
    manifest in last, so a reader sees the old sidecar or the new one; then drop the checkpoints."""
    rows = results.filter(pc.is_in(results["outcome"], value_set=pa.array([FOUND, NOT_FOUND])))
    rows = rows.select(BROCCOLI_CLASSIFICATIONS.names).cast(BROCCOLI_CLASSIFICATIONS)
    rows = rows.take(pc.sort_indices(rows["sha1"]))
    prefix = partition_prefix(BROCCOLI_CLASSIFICATIONS_DATASET, day) + "/"
    first = max((part_index(info.name) for info in store.list(prefix)), default=-1) + 1
    parts = tuple(
        write_table_part(store, BROCCOLI_CLASSIFICATIONS_DATASET, day, first + i, rows.slice(start, rows_per_part))
        for i, start in enumerate(range(0, max(len(rows), 1), rows_per_part))
    )
    manifest = Manifest(BROCCOLI_CLASSIFICATIONS_DATASET, keys.day(day), parts, len(rows), extra or {})
    publish_manifest(store, manifest)  # also deletes the superseded parts, and any a killed run left unlisted
    clear_checkpoints(store, day)
    return manifest
