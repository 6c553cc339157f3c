"""The Parquet exports under TI_EXPORT_URI: schemas, layout, manifest, publishing and reading.

Layout: ``<dataset>/date=YYYY-MM-DD/part-NNNNN.parquet`` plus ``_SUCCESS``, the manifest.
``vt_file_reports`` holds a day's kept, deduplicated VT reports; ``broccoli_classifications`` is its
classification sidecar. Hashes are ``fixed_size_binary`` (3.6x faster to write than hex and smaller).

The manifest is the partition's commit: parts are written first (each in one atomic write), then the
manifest naming them, then every other object of the folder is deleted. So a folder without a
manifest is incomplete, and readers (the loaders, the Broccoli sidecar) look at
a partition only through its manifest and read only the parts it lists, each still with the
generation the manifest recorded. The manifest is JSON::

    {"dataset": "vt_file_reports", "date": "YYYY-MM-DD",
     "parts": [{"name": "<dataset>/date=YYYY-MM-DD/part-00000.parquet", "rows": 10, "generation": 1}],
     "rows": 10, ...the writer's own figures (accounting, corrupt_packages, ...)}
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ti_pipeline.core import keys
from ti_pipeline.core.objectstore import ObjectInfo, ObjectStore

VT_FILE_REPORTS = pa.schema(
    [
        pa.field("sha256", pa.binary(32), nullable=False),
        pa.field("sha1", pa.binary(20)),
        pa.field("md5", pa.binary(16)),
        pa.field("positives", pa.int32(), nullable=False),
        pa.field("total", pa.int32()),
        pa.field("scan_date", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("detection_names", pa.string()),
        pa.field("source_package", pa.string(), nullable=False),
    ]
)

BROCCOLI_CLASSIFICATIONS = pa.schema(
    [
        pa.field("sha1", pa.binary(20), nullable=False),
        pa.field("classification", pa.string()),  # an ioc_file_hashes ENUM value, NULL when not found
        pa.field("label", pa.string()),  # Broccoli's own label, as returned
        pa.field("http_status", pa.int16(), nullable=False),
        pa.field("looked_up_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

VT_FILE_REPORTS_DATASET = "vt_file_reports"
BROCCOLI_CLASSIFICATIONS_DATASET = "broccoli_classifications"

SUCCESS_MARKER = "_SUCCESS"
DAY_KEY = "date"  # as in the folder name
# Manifests the VT export published before the day key was unified name it "day"; read it too,
# so those partitions stay loadable without a re-export.
LEGACY_DAY_KEY = "day"
_MANIFEST_KEYS = frozenset({"dataset", DAY_KEY, LEGACY_DAY_KEY, "parts", "rows"})
_PART = re.compile(r"part-([0-9]+)\.parquet")


class IncompleteExport(RuntimeError):
    """The partition has no manifest yet, or its manifest is unreadable or names a part that is
    missing or was rewritten since: the export is not (or no longer) complete, so nothing is read."""


def partition_prefix(dataset: str, day: date | str) -> str:
    """``<dataset>/date=YYYY-MM-DD`` from validated parts."""
    return keys.object_name(keys.segment(dataset), f"date={keys.day(day).isoformat()}")


def part_name(dataset: str, day: date | str, index: int) -> str:
    return f"{partition_prefix(dataset, day)}/part-{index:05d}.parquet"


def success_name(dataset: str, day: date | str) -> str:
    return f"{partition_prefix(dataset, day)}/{SUCCESS_MARKER}"


def part_index(name: str) -> int:
    """N of ``.../part-N.parquet``; -1 for a name of another shape (so the next free index is max + 1)."""
    match = _PART.fullmatch(name.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else -1


@dataclass(frozen=True)
class ExportPart:
    name: str  # relative to the store root
    rows: int
    # The part's generation when the manifest was written; None only in a hand-written manifest,
    # whose parts then cannot be checked for a rewrite.
    generation: int | None

    @property
    def file_name(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Manifest:
    """A partition's ``_SUCCESS``: the parts that make it up, their rows, and the writer's own figures."""

    dataset: str
    day: date
    parts: tuple[ExportPart, ...]
    rows: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return partition_prefix(self.dataset, self.day)

    def encode(self) -> bytes:
        clash = _MANIFEST_KEYS & set(self.details)
        if clash:
            raise ValueError(f"manifest details may not use the manifest's own keys: {sorted(clash)}")
        document = {
            **self.details,
            "dataset": self.dataset,
            DAY_KEY: self.day.isoformat(),
            "parts": [{"name": p.name, "rows": p.rows, "generation": p.generation} for p in self.parts],
            "rows": self.rows,
        }
        return json.dumps(document, indent=2, sort_keys=True).encode()


@dataclass(frozen=True)
class DayExport:
    """A published partition: its manifest, and the manifest object's generation and write time
    (a re-export changes both, which is how a re-export is told from the export already loaded)."""

    manifest: Manifest
    manifest_generation: int
    manifest_updated: float

    @property
    def parts(self) -> tuple[ExportPart, ...]:
        return self.manifest.parts

    @property
    def prefix(self) -> str:
        return self.manifest.prefix

    @property
    def rows(self) -> int:
        return self.manifest.rows


# ---- publishing -----------------------------------------------------------------------------------


def write_part(store: ObjectStore, dataset: str, day: date | str, index: int, local_path: Path, rows: int) -> ExportPart:
    """Upload a finished Parquet file as part ``index`` in one atomic write (seen whole or not at all)."""
    name = part_name(dataset, day, index)
    return ExportPart(name, rows, store.write_file(name, local_path).generation)


def write_table_part(store: ObjectStore, dataset: str, day: date | str, index: int, table: pa.Table) -> ExportPart:
    """``table`` as part ``index``, zstd-compressed, through a local temporary file."""
    with tempfile.TemporaryDirectory(prefix="ti-export-") as tmp:
        path = Path(tmp) / "part.parquet"
        pq.write_table(table, path, compression="zstd")
        return write_part(store, dataset, day, index, path, table.num_rows)


def withdraw(store: ObjectStore, dataset: str, day: date | str) -> None:
    """Delete the manifest, so that while the partition is rebuilt readers see none rather than a mix."""
    store.delete(success_name(dataset, day))


def publish_manifest(store: ObjectStore, manifest: Manifest) -> ObjectInfo:
    """Commit a partition whose parts are written: the manifest in one atomic write, then delete every
    other object of the folder (superseded parts, leftovers of a killed run) since nothing reads them."""
    success = success_name(manifest.dataset, manifest.day)
    info = store.write_bytes(success, manifest.encode())
    keep = {part.name for part in manifest.parts} | {success}
    for other in store.list(manifest.prefix + "/"):
        if other.name not in keep:
            store.delete(other.name)
    return info


# ---- reading --------------------------------------------------------------------------------------


def _count(value: object, where: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise IncompleteExport(f"{where}: {what} is not a count: {value!r}")
    return value


def _part(entry: object, prefix: str, where: str) -> ExportPart:
    """One listed part; a bare file name is taken as inside the partition, any other object refused."""
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str):
        raise IncompleteExport(f"{where} lists a part without a name: {entry!r}")
    full = name if "/" in name else f"{prefix}/{name}"
    inside = full[len(prefix) + 1 :] if full.startswith(prefix + "/") else ""
    if not _PART.fullmatch(inside):
        raise IncompleteExport(f"{where} lists a foreign object: {name!r}")
    generation = entry.get("generation")
    return ExportPart(
        full,
        _count(entry.get("rows"), where, f"rows of {name!r}"),
        _count(generation, where, f"generation of {name!r}") if generation is not None else None,
    )


def parse_manifest(raw: bytes, dataset: str, day: date | str) -> Manifest:
    """The manifest of ``<dataset>/date=<day>``; IncompleteExport when it is not one, or another's."""
    day = keys.day(day)
    prefix = partition_prefix(dataset, day)
    where = f"{prefix}/{SUCCESS_MARKER}"
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise IncompleteExport(f"{where} is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("parts"), list):
        raise IncompleteExport(f"{where} is not a manifest (no 'parts' list)")
    named = (document.get("dataset"), document.get(DAY_KEY, document.get(LEGACY_DAY_KEY)))
    if named != (dataset, day.isoformat()):
        raise IncompleteExport(f"{where} is not this partition's manifest (dataset, {DAY_KEY}: {named!r})")
    parts = tuple(_part(entry, prefix, where) for entry in document["parts"])
    details = {k: v for k, v in document.items() if k not in _MANIFEST_KEYS}
    return Manifest(dataset, day, parts, _count(document.get("rows"), where, "rows"), details)


def read_manifest(store: ObjectStore, dataset: str, day: date | str) -> DayExport | None:
    """The published partition, or None while it has no manifest (being written, or never)."""
    name = success_name(dataset, day)
    info = store.stat(name)
    if info is None:
        return None
    return DayExport(parse_manifest(store.read_bytes(name), dataset, day), info.generation, info.updated)


def require_export(store: ObjectStore, dataset: str, day: date | str) -> DayExport:
    """The published partition; IncompleteExport naming the manifest when there is none."""
    export = read_manifest(store, dataset, day)
    if export is None:
        raise IncompleteExport(f"{store.url_of(success_name(dataset, day))} does not exist: the export is incomplete")
    return export


def check_parts(store: ObjectStore, export: DayExport) -> None:
    """Every listed part exists with the generation its manifest recorded (else IncompleteExport)."""
    for part in export.parts:
        info = store.stat(part.name)
        if info is None:
            raise IncompleteExport(f"{store.url_of(part.name)} is listed in its manifest but missing")
        if part.generation is not None and info.generation != part.generation:
            raise IncompleteExport(
                f"{store.url_of(part.name)} changed since its manifest was written "
                f"(generation {info.generation} != {part.generation}): re-run once the new export is complete"
            )


def unlisted_parquet(store: ObjectStore, export: DayExport) -> list[str]:
    """Parquet objects in the partition that its manifest does not list (left by an unfinished export)."""
    listed = {p.name for p in export.parts}
    return [o.name for o in store.list(export.prefix + "/") if o.name.endswith(".parquet") and o.name not in listed]


def iter_batches(
    store: ObjectStore, part: ExportPart, batch_rows: int, columns: Sequence[str] | None = None
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(row offset in the part, batch)`` of one listed part, streamed in bounded batches."""
    offset = 0
    with store.open_read(part.name) as raw:
        for batch in pq.ParquetFile(raw).iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None):
            yield offset, batch
            offset += batch.num_rows
