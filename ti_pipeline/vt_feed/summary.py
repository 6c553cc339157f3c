"""What an exported day looks like: kept reports per hour of scan, and a few rows."""

from __future__ import annotations

from collections import Counter
from datetime import date

import pyarrow.compute as pc
import pyarrow.parquet as pq

from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.vt_feed.export import read_manifest


def hourly_scans(store: ObjectStore, day: date | str) -> dict[str, int]:
    """Kept reports by UTC hour of their scan_date (a day's export holds scans of earlier days too)."""
    hours: Counter[int] = Counter()
    manifest = read_manifest(store, day) or {"parts": []}
    for part in manifest["parts"]:
        with store.open_read(part["name"]) as f:
            parquet = pq.ParquetFile(f)
            for group in range(parquet.num_row_groups):
                column = parquet.read_row_group(group, columns=["scan_date"]).column("scan_date")
                counts = pc.value_counts(pc.hour(column))
                hours.update({int(v["values"].as_py()): int(v["counts"].as_py()) for v in counts})
    return {f"{h:02d}:00": hours.get(h, 0) for h in range(24)}


def sample_rows(store: ObjectStore, day: date | str, limit: int = 5) -> list[dict]:
    manifest = read_manifest(store, day) or {"parts": []}
    if not manifest["parts"]:
        return []
    with store.open_read(manifest["parts"][0]["name"]) as f:
        batch = next(pq.ParquetFile(f).iter_batches(batch_size=limit), None)
    return batch.to_pylist() if batch is not None else []
