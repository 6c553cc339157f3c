"""What an exported day looks like: kept reports per hour of scan, and a few rows."""

from __future__ import annotations

from collections import Counter
from datetime import date

import pyarrow.compute as pc
import pyarrow.parquet as pq

from ti_pipeline.core.exports import VT_FILE_REPORTS_DATASET, ExportPart, read_manifest
from ti_pipeline.core.objectstore import ObjectStore


def _parts(store: ObjectStore, day: date | str) -> tuple[ExportPart, ...]:
    """The parts of the day's published partition; none while it has no manifest."""
    export = read_manifest(store, VT_FILE_REPORTS_DATASET, day)
    return export.parts if export is not None else ()


def hourly_scans(store: ObjectStore, day: date | str) -> dict[str, int]:
    """Kept reports by UTC hour of their scan_date (a day's export holds scans of earlier days too)."""
    hours: Counter[int] = Counter()
    for part in _parts(store, day):
        with store.open_read(part.name) as f:
            parquet = pq.ParquetFile(f)
            for group in range(parquet.num_row_groups):
                column = parquet.read_row_group(group, columns=["scan_date"]).column("scan_date")
                counts = pc.value_counts(pc.hour(column))
                hours.update({int(v["values"].as_py()): int(v["counts"].as_py()) for v in counts})
    return {f"{h:02d}:00": hours.get(h, 0) for h in range(24)}


def sample_rows(store: ObjectStore, day: date | str, limit: int = 5) -> list[dict]:
    parts = _parts(store, day)
    if not parts:
        return []
    with store.open_read(parts[0].name) as f:
        batch = next(pq.ParquetFile(f).iter_batches(batch_size=limit), None)
    return batch.to_pylist() if batch is not None else []
