"""The Parquet exports under TI_EXPORT_URI: their one schema definition and where they live.

``vt_file_reports/date=YYYY-MM-DD/part-NNNNN.parquet`` holds a day's kept, deduplicated VT reports;
``broccoli_classifications/date=YYYY-MM-DD/part-NNNNN.parquet`` is its classification sidecar.
Hashes are ``fixed_size_binary`` (3.6x faster to write than hex and smaller). A partition is complete
only when its ``_SUCCESS`` marker exists; readers and sensors ignore a folder without one.
"""

from __future__ import annotations

from datetime import date

import pyarrow as pa

from ti_pipeline.core import keys

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

SUCCESS_MARKER = "_SUCCESS"


def partition_prefix(dataset: str, day: date | str) -> str:
    """``<dataset>/date=YYYY-MM-DD`` from validated parts."""
    return keys.object_name(keys.segment(dataset), f"date={keys.day(day).isoformat()}")


def part_name(dataset: str, day: date | str, index: int) -> str:
    return f"{partition_prefix(dataset, day)}/part-{index:05d}.parquet"


def success_name(dataset: str, day: date | str) -> str:
    return f"{partition_prefix(dataset, day)}/{SUCCESS_MARKER}"
