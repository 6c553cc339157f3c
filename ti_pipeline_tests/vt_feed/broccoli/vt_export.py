"""Small ``vt_file_reports`` partitions written with the schema of ``ti_pipeline.core.exports``, for the tests."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pyarrow as pa

from ti_pipeline.core import keys
from ti_pipeline.core.exports import (
    VT_FILE_REPORTS,
    VT_FILE_REPORTS_DATASET,
    ExportPart,
    Manifest,
    publish_manifest,
    write_table_part,
)
from ti_pipeline.core.objectstore import ObjectStore


def sha1(n: int) -> str:
    return hashlib.sha1(str(n).encode()).hexdigest()


def write_vt_export(store: ObjectStore, day: str, parts: list[list[str | None]], *, manifest: bool = True) -> list[ExportPart]:
    """One part per list of SHA1s (None = a row without SHA1); the manifest last, as the exporter does."""
    listed = []
    serial = 0
    for index, sha1s in enumerate(parts):
        rows = []
        for value in sha1s:
            serial += 1
            rows.append(
                {
                    "sha256": hashlib.sha256(f"{day}-{serial}".encode()).digest(),
                    "sha1": bytes.fromhex(value) if value else None,
                    "md5": None,
                    "positives": 3,
                    "total": 70,
                    "scan_date": datetime(2020, 11, 5, tzinfo=UTC),
                    "detection_names": "E1:Mal",
                    "source_package": f"{day.replace('-', '')}T0000",
                }
            )
        listed.append(write_table_part(store, VT_FILE_REPORTS_DATASET, day, index, pa.Table.from_pylist(rows, VT_FILE_REPORTS)))
    if manifest:
        publish_manifest(store, Manifest(VT_FILE_REPORTS_DATASET, keys.day(day), tuple(listed), sum(p.rows for p in listed)))
    return listed
