"""Benchmark of the ``sql`` loader into MariaDB/MySQL against the plain tools, on the same rows, same run.

    python bench/load.py --rows 200000            # modest default
    python bench/load.py --rows 1000000           # the issue's size

Measures rows/s of: a raw ``LOAD DATA LOCAL INFILE`` of the rows (a ready TSV) into an empty copy
of ``ioc_file_hashes``; ``executemany`` INSERT batches into another empty copy; the ``sql`` loader
(Parquet -> staging by LOAD DATA -> guarded merge) for a first day into the empty table, and for a
second day (half new, half newer rescans) that merges into the filled table. Prints the ratios and
the merge's share of the loader's time.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from ti_pipeline.core import migrations, schema, settings
from ti_pipeline.core.exports import BROCCOLI_CLASSIFICATIONS, VT_FILE_REPORTS
from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.vt_feed.load import LoadSettings, load_day
from ti_pipeline.vt_feed.load.sql import write_tsv

CLASSES = np.array(["MALWARE", "RANSOMWARE", "UNWANTED", "HACKTOOL", None], dtype=object)
# Every row is merged (the UNKNOWN ones too), so the figures compare with earlier runs of this bench.
EVERYTHING = ImportPolicy.parse("ALL")


def fixed(values: np.ndarray, width: int) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), values.size // width, [None, pa.py_buffer(values.tobytes())])


def day_tables(rng: np.random.Generator, ids: np.ndarray, scan: datetime) -> tuple[pa.Table, pa.Table]:
    """Reports and sidecar for the files ``ids`` (hashes derived from the id, so days overlap by id)."""
    n = len(ids)
    seeds = np.random.default_rng(7).bytes(68 * (int(ids.max()) + 1))
    raw = np.frombuffer(seeds, dtype=np.uint8).reshape(-1, 68)[ids]
    sha256, sha1, md5 = fixed(raw[:, :32].copy(), 32), fixed(raw[:, 32:52].copy(), 20), fixed(raw[:, 52:68].copy(), 16)
    positives = rng.integers(1, 70, n, dtype=np.int32)
    names = pa.array([f"EngineA:Trojan.Gen.{i};EngineB:Malware.{i % 97}" for i in ids])
    scans = pa.array(np.full(n, np.datetime64(scan.replace(tzinfo=None), "us")) + rng.integers(0, 86_400_000_000, n).astype("timedelta64[us]"))
    reports = pa.table(
        [sha256, sha1, md5, pa.array(positives), pa.array(np.full(n, 72, dtype=np.int32)), scans.cast(pa.timestamp("us", tz="UTC")), names, pa.array(["20240101T0000"] * n)],
        schema=VT_FILE_REPORTS,
    )
    labels = CLASSES[ids % len(CLASSES)]
    sidecar = pa.table(
        [sha1, pa.array(labels, pa.string()), pa.array(labels, pa.string()), pa.array(np.where(labels == None, 404, 200).astype(np.int16)),  # noqa: E711
         pa.array(np.full(n, np.datetime64("2024-02-01T00:00:00", "us"))).cast(pa.timestamp("us", tz="UTC"))],
        schema=BROCCOLI_CLASSIFICATIONS,
    )
    return reports, sidecar


def write_export(store: LocalStore, day: str, reports: pa.Table, sidecar: pa.Table, part_rows: int) -> None:
    import pyarrow.parquet as pq

    from ti_pipeline.core.exports import (
        BROCCOLI_CLASSIFICATIONS_DATASET,
        VT_FILE_REPORTS_DATASET,
        Manifest,
        publish_manifest,
        write_part,
    )

    for dataset, table in ((VT_FILE_REPORTS_DATASET, reports), (BROCCOLI_CLASSIFICATIONS_DATASET, sidecar)):
        parts = []
        with tempfile.TemporaryDirectory() as tmp:
            for index, start in enumerate(range(0, table.num_rows, part_rows)):
                local = Path(tmp) / "p.parquet"
                chunk = table.slice(start, part_rows)
                pq.write_table(chunk, local)
                parts.append(write_part(store, dataset, day, index, local, chunk.num_rows))
        publish_manifest(store, Manifest(dataset, date.fromisoformat(day), tuple(parts), table.num_rows))


def final_rows(reports: pa.Table, sidecar_classes: pa.Array) -> pa.Table:
    """The rows as ioc_file_hashes holds them (what the plain tools load)."""
    classification = pa.array([c or "UNKNOWN" for c in sidecar_classes.to_pylist()])
    scan = reports.column("scan_date").cast(pa.timestamp("us"))
    return pa.table({
        "sha256": reports.column("sha256"), "sha1": reports.column("sha1"), "md5": reports.column("md5"),
        "classification": classification, "source": pa.array(["VIRUS_TOTAL"] * reports.num_rows),
        "detection_names": reports.column("detection_names"), "scan_date": scan,
        "positives": reports.column("positives"), "total": reports.column("total"), "first_seen": scan, "last_seen": scan,
    })


def raw_load_data(engine: sa.Engine, table: str, rows: pa.Table) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.tsv")
        for batch in rows.to_batches(max_chunksize=rows.num_rows):
            write_tsv(batch, path)
        binaries = ("sha256", "sha1", "md5")
        targets = ", ".join(f"@{c}" if c in binaries else f"`{c}`" for c in rows.column_names)
        sets = ", ".join(f"`{c}` = UNHEX(@{c})" for c in binaries)
        statement = (
            f"LOAD DATA LOCAL INFILE %(path)s INTO TABLE `{table}` CHARACTER SET utf8mb4 FIELDS TERMINATED BY '\\t' "
            f"OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' LINES TERMINATED BY '\\n' ({targets}) SET {sets}"
        )
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.exec_driver_sql(statement, {"path": path})
        return time.perf_counter() - started


def executemany(engine: sa.Engine, table: str, rows: pa.Table, batch: int) -> float:
    columns = rows.column_names
    # The table is one of this script's own empty copies, the columns the schema's.
    statement = f"INSERT INTO `{table}` ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608
    tuples = list(zip(*(rows.column(c).to_pylist() for c in columns), strict=True))
    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for start in range(0, len(tuples), batch):
            cursor.executemany(statement, tuples[start : start + batch])
            raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows per day (default 200000)")
    parser.add_argument("--server", default=settings.resolve("TI_TEST_MYSQL_URL"))
    parser.add_argument("--database", default="ti_bench_load")
    parser.add_argument("--batch-rows", type=int, default=50_000, help="loader staging batch")
    parser.add_argument("--merge-chunk-rows", type=int, default=100_000)
    parser.add_argument("--executemany-batch", type=int, default=1000)
    args = parser.parse_args(argv)
    n = args.rows
    rng = np.random.default_rng(1)
    admin = sa.create_engine(f"{args.server}/mysql")
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{args.database}`")
        conn.exec_driver_sql(f"CREATE DATABASE `{args.database}`")
    url = f"{args.server}/{args.database}?local_infile=1"
    migrations.upgrade(url)
    warehouse = Warehouse(url)
    engine = warehouse.engine
    for copy in ("ioc_file_hashes_raw", "ioc_file_hashes_executemany"):
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE `{copy}` LIKE ioc_file_hashes")

    day1 = np.arange(n)
    day2 = np.arange(n // 2, n + n // 2)  # half rescans of day 1 (newer), half new files
    reports1, sidecar1 = day_tables(rng, day1, datetime(2024, 1, 1, tzinfo=UTC))
    reports2, sidecar2 = day_tables(rng, day2, datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=1))
    rows1 = final_rows(reports1, sidecar1.column("classification").combine_chunks())

    results: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="ti-bench-load-") as tmp:
        store = LocalStore(Path(tmp))
        write_export(store, "2024-01-01", reports1, sidecar1, part_rows=100_000)
        write_export(store, "2024-01-02", reports2, sidecar2, part_rows=100_000)
        results.append(("raw LOAD DATA LOCAL INFILE (empty copy)", raw_load_data(engine, "ioc_file_hashes_raw", rows1)))
        results.append((f"executemany INSERT, {args.executemany_batch}-row batches (empty copy)", executemany(engine, "ioc_file_hashes_executemany", rows1, args.executemany_batch)))
        load_settings = LoadSettings(batch_rows=args.batch_rows, merge_chunk_rows=args.merge_chunk_rows)
        log = logging.getLogger("bench.load")
        shares = {}
        for label, day in (("sql loader, first day into the empty table", "2024-01-01"), ("sql loader, second day merging into the filled table", "2024-01-02")):
            started = time.perf_counter()
            load = load_day(warehouse, store, day, load_settings, log=log, quarantine=lambda r: None, policy=EVERYTHING)
            elapsed = time.perf_counter() - started
            results.append((label, elapsed))
            f = load.accounting.figures
            shares[label] = (f["merge_ms"] / 1000, f["staging_ms"] / 1000, f["inserted"], f["updated"])
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(schema.ioc_file_hashes)).scalar_one()
    warehouse.dispose()
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{args.database}`")
    admin.dispose()

    raw = n / results[0][1]
    print(f"\n{n:,} rows per day; ioc_file_hashes ends with {count:,} rows (expected {n + n // 2:,})\n")
    print("| method | seconds | rows/s | vs raw LOAD DATA |\n|---|---:|---:|---:|")
    for label, seconds in results:
        print(f"| {label} | {seconds:.2f} | {n / seconds:,.0f} | {n / seconds / raw:.2f} |")
    print()
    for label, (merge, staging, inserted, updated) in shares.items():
        total = merge + staging
        print(f"{label}: staging {staging:.2f}s, merge {merge:.2f}s = {merge / total:.0%} of the load; inserted {inserted:,}, updated {updated:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
