"""A complete export day as the loaders see it: its ``_SUCCESS`` manifest and the parts it lists.

Only listed parts are ever read (a folder may also hold parts of an export that never finished),
and each listed part must still have the generation the manifest recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq

from ti_pipeline.core import keys
from ti_pipeline.core.exports import SUCCESS_MARKER, partition_prefix, success_name
from ti_pipeline.core.objectstore import ObjectStore


class IncompleteExport(RuntimeError):
    """The day has no manifest yet, or a listed part is missing or was rewritten since."""


@dataclass(frozen=True)
class ExportPart:
    name: str  # relative to the store root
    rows: int | None
    generation: int | None

    @property
    def file_name(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DayExport:
    dataset: str
    day: date
    prefix: str
    parts: tuple[ExportPart, ...]
    rows: int | None
    manifest_generation: int
    manifest_updated: float

    @property
    def yyyymmdd(self) -> str:
        return self.day.strftime("%Y%m%d")

    @property
    def total_rows(self) -> int:
        """The manifest's row count, else the sum of its parts' counts."""
        return self.rows if self.rows is not None else sum(p.rows or 0 for p in self.parts)


def parse_manifest(raw: bytes, dataset: str, day: date | str) -> tuple[tuple[ExportPart, ...], int | None]:
    """The listed parts and total rows of a manifest; a bare part name is taken as inside the partition."""
    prefix = partition_prefix(dataset, day)
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise IncompleteExport(f"{prefix}/{SUCCESS_MARKER} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), list):
        raise IncompleteExport(f"{prefix}/{SUCCESS_MARKER} is not a manifest (no 'parts' list)")
    parts = []
    for entry in manifest["parts"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise IncompleteExport(f"{prefix}/{SUCCESS_MARKER} lists a part without a name: {entry!r}")
        full = name if "/" in name else f"{prefix}/{name}"
        if not full.startswith(prefix + "/") or "/" in full[len(prefix) + 1 :] or not full.endswith(".parquet"):
            raise IncompleteExport(f"{prefix}/{SUCCESS_MARKER} lists a foreign object: {name!r}")
        keys.segment(full.rsplit("/", 1)[-1])
        rows, generation = entry.get("rows"), entry.get("generation")
        parts.append(ExportPart(full, int(rows) if rows is not None else None, int(generation) if generation is not None else None))
    total = manifest.get("rows")
    return tuple(parts), int(total) if total is not None else None


def read_day_export(store: ObjectStore, dataset: str, day: date | str) -> DayExport | None:
    """The day's export when its manifest exists, else None (still being written, or never)."""
    name = success_name(dataset, day)
    info = store.stat(name)
    if info is None:
        return None
    parts, rows = parse_manifest(store.read_bytes(name), dataset, day)
    return DayExport(dataset, keys.day(day), partition_prefix(dataset, day), parts, rows, info.generation, info.updated)


def require_day_export(store: ObjectStore, dataset: str, day: date | str) -> DayExport:
    export = read_day_export(store, dataset, day)
    if export is None:
        raise IncompleteExport(f"{store.url_of(success_name(dataset, day))} does not exist: the export is incomplete")
    return export


def check_parts(store: ObjectStore, export: DayExport) -> None:
    """Every listed part exists with the generation its manifest recorded."""
    for part in export.parts:
        info = store.stat(part.name)
        if info is None:
            raise IncompleteExport(f"{store.url_of(part.name)} is listed in its manifest but missing")
        if part.generation is not None and info.generation != part.generation:
            raise IncompleteExport(
                f"{store.url_of(part.name)} changed since its manifest was written "
                f"(generation {info.generation} != {part.generation}): load the new export once it is complete"
            )


def unlisted_parquet(store: ObjectStore, export: DayExport) -> list[str]:
    """Parquet objects in the partition that its manifest does not list (left by an unfinished export)."""
    listed = {p.name for p in export.parts}
    return [o.name for o in store.list(export.prefix + "/") if o.name.endswith(".parquet") and o.name not in listed]


def iter_batches(store: ObjectStore, part: ExportPart, batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(row offset in the part, batch)`` of one listed part, streamed in bounded batches."""
    offset = 0
    with store.open_read(part.name) as raw:
        for batch in pq.ParquetFile(raw).iter_batches(batch_size=batch_rows):
            yield offset, batch
            offset += batch.num_rows
