"""Small export partitions, written and published through ti_pipeline.core.exports as the exporters do."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pyarrow as pa
import sqlalchemy as sa

from ti_pipeline.core import keys, schema
from ti_pipeline.core.exports import (
    BROCCOLI_CLASSIFICATIONS,
    BROCCOLI_CLASSIFICATIONS_DATASET,
    VT_FILE_REPORTS,
    VT_FILE_REPORTS_DATASET,
    Manifest,
    publish_manifest,
    write_table_part,
)
from ti_pipeline.core.objectstore import ObjectStore


def sha256_of(n: int) -> bytes:
    return hashlib.sha256(b"file-%d" % n).digest()


def sha1_of(n: int) -> bytes:
    return hashlib.sha1(b"file-%d" % n).digest()


def md5_of(n: int) -> bytes:
    return hashlib.md5(b"file-%d" % n).digest()


def ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def report(n: int, scan: str, positives: int = 5, total: int = 70, detections: str | None = None) -> dict:
    return {
        "sha256": sha256_of(n),
        "sha1": sha1_of(n),
        "md5": md5_of(n),
        "positives": positives,
        "total": total,
        "scan_date": ts(scan),
        "detection_names": detections if detections is not None else f"EngineA:Trojan.{n};EngineB:Gen\t\"{n}\"",
        "source_package": f"20240101T{n % 1440 // 60:02d}{n % 60:02d}",
    }


def classification(n: int, value: str | None, status: int = 200) -> dict:
    return {
        "sha1": sha1_of(n),
        "classification": value,
        "label": value.lower() if value else None,
        "http_status": status,
        "looked_up_at": ts("2024-02-01 00:00:00"),
    }


def write_partition(store: ObjectStore, dataset: str, day: str, rows: list[dict], schema: pa.Schema, parts: int = 1) -> Manifest:
    """Parquet parts, then the ``_SUCCESS`` manifest listing them (published last)."""
    size = max(1, -(-len(rows) // parts)) if rows else 1
    chunks = [rows[i : i + size] for i in range(0, len(rows), size)] or [[]]
    listed = tuple(
        write_table_part(store, dataset, day, index, pa.Table.from_pylist(chunk, schema=schema))
        for index, chunk in enumerate(chunks)
    )
    manifest = Manifest(dataset, keys.day(day), listed, len(rows))
    publish_manifest(store, manifest)
    return manifest


def write_day(store: ObjectStore, day: str, reports: list[dict], classifications: list[dict], parts: int = 1) -> None:
    write_partition(store, VT_FILE_REPORTS_DATASET, day, reports, VT_FILE_REPORTS, parts)
    write_partition(store, BROCCOLI_CLASSIFICATIONS_DATASET, day, classifications, BROCCOLI_CLASSIFICATIONS)


SNAPSHOT_COLUMNS = [c for c in schema.ioc_file_hashes.c if c.name not in ("created_at", "updated_at")]


def snapshot(warehouse) -> list[tuple]:
    """Every row of ioc_file_hashes except its bookkeeping timestamps, in key order."""
    with warehouse.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(*SNAPSHOT_COLUMNS).order_by(schema.ioc_file_hashes.c.sha256))]


def rows_by_sha256(warehouse) -> dict[bytes, dict]:
    with warehouse.engine.connect() as conn:
        return {r.sha256: dict(r._mapping) for r in conn.execute(sa.select(schema.ioc_file_hashes))}
