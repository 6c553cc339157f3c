"""The classification sidecar of one VT export day: what to look up, checkpoints, and publishing.

Layout (``ti_pipeline.core.exports``): the export day's SHA1s come from the parts listed in
``vt_file_reports/date=D/_SUCCESS``; the sidecar is ``broccoli_classifications/date=D/part-NNNNN.parquet``
plus its own ``_SUCCESS`` written last. While a day is being looked up, every finished batch of lookups
is saved as a checkpoint part under ``broccoli_classifications-checkpoints/date=D/`` so a run that
fails (a lookup that still fails after its retries, a killed process) loses none of its successes:
the re-run starts from the previous sidecar plus the checkpoints and looks up only what is missing.
Publishing writes new part names (indices after the previous ones), then swaps the manifest in one
atomic write, then deletes the superseded parts and the checkpoints, so a reader sees the old
sidecar or the new one, never a mix.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ti_pipeline.core import keys
from ti_pipeline.core.exports import (
    BROCCOLI_CLASSIFICATIONS,
    SUCCESS_MARKER,
    part_name,
    partition_prefix,
    success_name,
)
from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.vt_feed.broccoli.client import FOUND, NOT_FOUND, REJECTED, Lookup

EXPORT_DATASET = "vt_file_reports"
SIDECAR_DATASET = "broccoli_classifications"
CHECKPOINT_DATASET = "broccoli_classifications-checkpoints"

# A checkpoint keeps every finished outcome: sidecar rows (found, not found) and rejected lookups
# with their reason, so a re-run neither repeats them nor forgets to quarantine them.
CHECKPOINT_SCHEMA = BROCCOLI_CLASSIFICATIONS.append(pa.field("outcome", pa.string(), nullable=False)).append(
    pa.field("reason", pa.string())
)
SHA1 = pa.binary(20)


class IncompleteExport(RuntimeError):
    """The export day has no manifest yet, or a part it lists is missing or was rewritten."""


@dataclass(frozen=True)
class ExportSha1s:
    sha1s: pa.Array  # distinct, non-null, fixed_size_binary(20), sorted
    rows: int
    rows_without_sha1: int
    parts: int


def read_manifest(store: ObjectStore, dataset: str, day: date | str) -> dict | None:
    """A partition's ``_SUCCESS`` manifest, or None while the partition is incomplete."""
    name = success_name(dataset, day)
    if store.stat(name) is None:
        return None
    manifest = orjson.loads(store.read_bytes(name))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), list):
        raise IncompleteExport(f"{store.url_of(name)}: not a manifest (no 'parts' list)")
    return manifest


def manifest_part_names(manifest: dict, dataset: str, day: date | str) -> list[tuple[str, int | None]]:
    """``(object name, generation)`` of every listed part; a bare file name is taken as inside the partition."""
    prefix = partition_prefix(dataset, day)
    out = []
    for part in manifest["parts"]:
        name = part["name"]
        if "/" not in name:
            name = f"{prefix}/{name}"
        if not name.startswith(prefix + "/") or name.endswith(SUCCESS_MARKER):
            raise IncompleteExport(f"manifest of {prefix} lists a foreign object: {part['name']!r}")
        generation = part.get("generation")
        out.append((name, int(generation) if generation is not None else None))
    return out


def _read_listed_part(store: ObjectStore, name: str, generation: int | None, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    info = store.stat(name)
    if info is None:
        raise IncompleteExport(f"{store.url_of(name)} is listed in its manifest but missing")
    if generation is not None and info.generation != generation:
        raise IncompleteExport(
            f"{store.url_of(name)} changed since its manifest was written "
            f"(generation {info.generation} != {generation}): re-run once the export is complete"
        )
    with store.open_read(name) as raw:
        yield from pq.ParquetFile(raw).iter_batches(columns=list(columns), batch_size=65536)


def export_sha1s(store: ObjectStore, day: date | str) -> ExportSha1s:
    """The distinct SHA1s of a complete export day, read column-only, part by part."""
    manifest = read_manifest(store, EXPORT_DATASET, day)
    if manifest is None:
        raise IncompleteExport(f"{store.url_of(success_name(EXPORT_DATASET, day))} does not exist: export incomplete")
    uniques: list[pa.Array] = []
    rows = nulls = 0
    parts = manifest_part_names(manifest, EXPORT_DATASET, day)
    for name, generation in parts:
        for batch in _read_listed_part(store, name, generation, ["sha1"]):
            column = batch.column(0)
            rows += len(column)
            nulls += column.null_count
            uniques.append(pc.unique(column.drop_null()))
    distinct = pc.unique(pa.chunked_array(uniques, type=SHA1)) if uniques else pa.array([], SHA1)
    distinct = pc.take(distinct, pc.sort_indices(distinct))
    return ExportSha1s(distinct, rows, nulls, len(parts))


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


def _write_parquet(store: ObjectStore, name: str, table: pa.Table) -> int:
    """Write ``table`` as one Parquet object atomically; returns its generation."""
    with tempfile.TemporaryDirectory(prefix="ti-broccoli-") as tmp:
        path = Path(tmp) / "part.parquet"
        pq.write_table(table, path, compression="zstd")
        return store.write_file(name, path).generation


def _part_index(name: str) -> int:
    """N of ``.../part-N.parquet``; -1 for a name of another shape."""
    stem = name.rsplit("/", 1)[-1]
    digits = stem.removeprefix("part-").removesuffix(".parquet")
    return int(digits) if stem.startswith("part-") and digits.isdigit() else -1


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
    index = _part_index(existing[-1]) + 1 if existing else 0
    name = part_name(CHECKPOINT_DATASET, day, index)
    _write_parquet(store, name, lookups_table(done))
    return name


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
    manifest = read_manifest(store, SIDECAR_DATASET, day)
    if manifest is not None:
        for name, generation in manifest_part_names(manifest, SIDECAR_DATASET, day):
            batches = list(_read_listed_part(store, name, generation, BROCCOLI_CLASSIFICATIONS.names))
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


@dataclass(frozen=True)
class Published:
    parts: list[dict]
    rows: int


def publish(
    store: ObjectStore, day: date | str, results: pa.Table, *, rows_per_part: int = 1_000_000, extra: dict | None = None
) -> Published:
    """Write the sidecar (found and not-found rows, by SHA1) and swap its manifest in last."""
    rows = results.filter(pc.is_in(results["outcome"], value_set=pa.array([FOUND, NOT_FOUND])))
    rows = rows.select(BROCCOLI_CLASSIFICATIONS.names).cast(BROCCOLI_CLASSIFICATIONS)
    rows = rows.take(pc.sort_indices(rows["sha1"]))
    prefix = partition_prefix(SIDECAR_DATASET, day) + "/"
    present = [info.name for info in store.list(prefix) if info.name.endswith(".parquet")]
    first = max((_part_index(name) for name in present), default=-1) + 1
    parts = []
    for i, start in enumerate(range(0, max(len(rows), 1), rows_per_part)):
        chunk = rows.slice(start, rows_per_part)
        name = part_name(SIDECAR_DATASET, day, first + i)
        parts.append({"name": name, "rows": len(chunk), "generation": _write_parquet(store, name, chunk)})
    manifest = {"parts": parts, "rows": len(rows), "dataset": SIDECAR_DATASET, "date": str(day), **(extra or {})}
    store.write_bytes(success_name(SIDECAR_DATASET, day), orjson.dumps(manifest))
    listed = {part["name"] for part in parts}
    for name in present:  # superseded parts, and any a killed run left unlisted
        if name not in listed:
            store.delete(name)
    clear_checkpoints(store, day)
    return Published(parts, len(rows))
