"""Benchmark of the ``sql`` loader into MariaDB/MySQL against the plain tools, on the same rows, same run.

    flock /tmp/ti_bench.lock python bench/load.py --rows 200000 --repeat 3
    flock /tmp/ti_bench.lock python bench/load.py --rows 1000000 --repeat 1

Rows have the real shapes: random SHA256/SHA1/MD5, ``detection_names`` of one ``Engine:Result`` pair
per positive (about 480 characters on average), and the Broccoli mix of ``sample_data/broccoli.py``
(15% of SHA1s without an object, whitelist / indifferent / clean / unknown verdicts), loaded under
the default import policy, so about a third of the rows are filtered ``classification_not_imported``.
The export is sorted by sha256 as ``vt_feed/export.py`` writes it.

Each repeat, on a fresh database, measures:
- raw ``LOAD DATA LOCAL INFILE`` of a ready TSV of the rows the first day leaves in the table (the
  admitted rows, in export order) into an empty copy of ``ioc_file_hashes``;
- ``executemany`` INSERT batches of the same rows into another empty copy;
- the server's own floors: the same raw LOAD DATA cut at the loader's batch boundaries (one statement
  and transaction per batch, as the loader sends them), and day 2 with no check and no rule: LOAD DATA
  of its new admitted rows into the filled copy, staging its stored keys' rows (one LOAD DATA into a
  keyed table) and a bare ``UPDATE ... JOIN`` of those rows' scan columns; the copies are then dropped,
  so the loader's table has the buffer pool to itself;
- the loader kernel (``load_day``) on day 1 (empty table) and day 2 (half newer rescans of day 1,
  half new files), with its staging / merge split (new keys go straight into the table during
  "staging": ``direct_rows``; only stored keys are staged and merged: ``staged_rows``);
- the materialization as a user runs it: ``dagster asset materialize`` of ``vt_feed/ioc_file_hashes``
  in a fresh process, once for an empty day (a published export with zero rows: the fixed cost) and
  once for day 1 into an empty table.
Ratios are raw LOAD DATA seconds / method seconds: both end with the same table.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from ti_pipeline.core import migrations, schema, settings, values
from ti_pipeline.core.exports import (
    BROCCOLI_CLASSIFICATIONS,
    BROCCOLI_CLASSIFICATIONS_DATASET,
    VT_FILE_REPORTS,
    VT_FILE_REPORTS_DATASET,
    Manifest,
    publish_manifest,
    write_part,
)
from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.vt_feed.load import LoadSettings, load_day
from ti_pipeline.vt_feed.load.sql import write_tsv

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
DAY1, DAY2, EMPTY_DAY = "2024-01-01", "2024-01-02", "2024-01-03"
POLICY = ImportPolicy(values.PRODUCTION_CLASSIFICATIONS)
ENGINES = [
    "Kaspersky", "ESET-NOD32", "Microsoft", "BitDefender", "Avast", "AVG", "Symantec", "McAfee", "Sophos", "TrendMicro",
    "DrWeb", "Fortinet", "GData", "Ikarus", "Emsisoft", "ClamAV", "Cyren", "Avira", "Panda", "Zillya", "VIPRE", "K7GW",
    "Rising", "Jiangmin", "Tencent", "Yandex", "MAX", "Arcabit", "ALYac", "AhnLab-V3", "Cynet", "Elastic", "Lionic",
    "MicroWorld-eScan", "FireEye", "Webroot", "Zoner", "SentinelOne", "CrowdStrike", "Malwarebytes",
]
RESULTS = [
    "Trojan.Win32.Generic", "HEUR:Trojan.Win32.Agent.gen", "Win32/Kryptik.HMQP", "Trojan:Win32/Wacatac.B!ml",
    "Gen:Variant.Razy.123456", "Win32:Malware-gen", "Trojan.GenericKD.46789012", "Artemis!7A3C8E2F1B04",
    "Mal/Generic-S", "TROJ_GEN.R002C0DL321", "Trojan.DownLoader43.12345", "W32/Agent.ABCD!tr",
    "Backdoor.Win32.Agent.xyz", "malicious (high confidence)", "Unsafe",
]
# sample_data/broccoli.py's labels as the sidecar holds them (label, classification), weights; None: no object (404).
BROCCOLI = [
    (("malware", "MALWARE"), 40), (("pua", "UNWANTED"), 14), (("ransomware", "RANSOMWARE"), 8), (("hacktool", "HACKTOOL"), 6),
    (("maltool", "MALTOOL"), 3), (("suspicious", "SUSPICIOUS"), 8), (("whitelist", "WHITELIST"), 6),
    (("indifferent", "INDIFFERENT"), 6), (("clean", "INDIFFERENT"), 4), (("unknown", "UNKNOWN"), 5), (("coinminer", None), 3),
]
SHARE_WITH_OBJECT = 0.85


def fixed(values: np.ndarray, width: int) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(values.tobytes())])


def detections(rng: np.random.Generator, positives: np.ndarray) -> pa.Array:
    names = []
    for p in positives:
        engines = rng.choice(len(ENGINES), min(int(p), len(ENGINES)), replace=False)
        names.append(";".join(f"{ENGINES[e]}:{RESULTS[r]}" for e, r in zip(engines, rng.integers(0, len(RESULTS), len(engines)), strict=True)))
    return pa.array(names)


class Files:
    """Hashes and the Broccoli answer of file ids 0..n-1 (the same file on every day)."""

    def __init__(self, count: int):
        raw = np.frombuffer(np.random.default_rng(7).bytes(68 * count), dtype=np.uint8).reshape(-1, 68)
        self.sha256, self.sha1, self.md5 = raw[:, :32].copy(), raw[:, 32:52].copy(), raw[:, 52:68].copy()
        rng = np.random.default_rng(3)
        self.has_object = rng.random(count) < SHARE_WITH_OBJECT
        weights = np.array([w for _, w in BROCCOLI], dtype=float)
        self.answer = rng.choice(len(BROCCOLI), count, p=weights / weights.sum())

    def day(self, ids: np.ndarray, day: str, seed: int) -> tuple[pa.Table, pa.Table]:
        """Reports (sorted by sha256, as exported) and the sidecar of the files ``ids`` scanned on ``day``."""
        rng = np.random.default_rng(seed)
        n = len(ids)
        positives = np.clip(rng.gamma(1.5, 12, n), 1, 70).astype(np.int32)
        scans = np.datetime64(f"{day}T00:00:00", "us") + rng.integers(0, 86_400_000_000, n).astype("timedelta64[us]")
        reports = pa.table(
            [
                fixed(self.sha256[ids], 32), fixed(self.sha1[ids], 20), fixed(self.md5[ids], 16), pa.array(positives),
                pa.array(np.full(n, 72, dtype=np.int32)), pa.array(scans).cast(pa.timestamp("us", tz="UTC")),
                detections(rng, positives), pa.array(np.full(n, day.replace("-", "") + "T0000")),
            ],
            schema=VT_FILE_REPORTS,
        ).sort_by("sha256")
        found = ids[self.has_object[ids]]
        answers = [BROCCOLI[a][0] for a in self.answer[found]]
        sidecar = pa.table(
            [
                fixed(self.sha1[found], 20), pa.array([c for _, c in answers], pa.string()), pa.array([label for label, _ in answers]),
                pa.array(np.full(len(found), 200, dtype=np.int16)),
                pa.array(np.full(len(found), np.datetime64(f"{day}T12:00:00", "us"))).cast(pa.timestamp("us", tz="UTC")),
            ],
            schema=BROCCOLI_CLASSIFICATIONS,
        ).sort_by("sha1")
        return reports, sidecar


def write_export(store: LocalStore, day: str, reports: pa.Table, sidecar: pa.Table, part_rows: int = 100_000) -> None:
    for dataset, table in ((VT_FILE_REPORTS_DATASET, reports), (BROCCOLI_CLASSIFICATIONS_DATASET, sidecar)):
        parts = []
        with tempfile.TemporaryDirectory() as tmp:
            for index, start in enumerate(range(0, max(table.num_rows, 1), part_rows)):
                local = Path(tmp) / "p.parquet"
                chunk = table.slice(start, part_rows)
                pq.write_table(chunk, local, compression="zstd")
                parts.append(write_part(store, dataset, day, index, local, chunk.num_rows))
        publish_manifest(store, Manifest(dataset, date.fromisoformat(day), tuple(parts), table.num_rows))


def final_rows(reports: pa.Table, sidecar: pa.Table) -> pa.Table:
    """Day 1's rows as ioc_file_hashes holds them after the load (no tokens, empty table): admitted only."""
    joined = reports.join(sidecar.select(["sha1", "classification"]), "sha1", join_type="left outer").sort_by("sha256")
    classification = pc.fill_null(joined.column("classification"), "UNKNOWN")
    scan = joined.column("scan_date").cast(pa.timestamp("us"))
    rows = pa.table({
        "sha256": joined.column("sha256"), "sha1": joined.column("sha1"), "md5": joined.column("md5"),
        "classification": classification, "source": pa.array(["VIRUS_TOTAL"] * joined.num_rows),
        "detection_names": joined.column("detection_names"), "scan_date": scan,
        "positives": joined.column("positives"), "total": joined.column("total"), "first_seen": scan, "last_seen": scan,
    })
    return rows.filter(pc.is_in(classification, pa.array(POLICY.classifications)))


def raw_load_data(engine: sa.Engine, table: str, rows: pa.Table) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.tsv")
        write_tsv(rows.combine_chunks().to_batches()[0], path)
        binaries = ("sha256", "sha1", "md5")
        targets = ", ".join(f"@{c}" if c in binaries else f"`{c}`" for c in rows.column_names)
        sets = ", ".join(f"`{c}` = UNHEX(@{c})" for c in binaries if c in rows.column_names)
        statement = (
            f"LOAD DATA LOCAL INFILE %(path)s INTO TABLE `{table}` CHARACTER SET utf8mb4 FIELDS TERMINATED BY '\\t' "
            f"OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' LINES TERMINATED BY '\\n' ({targets}) SET {sets}"
        )
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.exec_driver_sql(statement, {"path": path})
        return time.perf_counter() - started


def raw_batched(engine: sa.Engine, table: str, reports: pa.Table, sidecar: pa.Table, batch_rows: int) -> float:
    """Raw LOAD DATA of the rows the loader admits, one statement and transaction per loader batch."""
    return sum(raw_load_data(engine, table, final_rows(reports.slice(start, batch_rows), sidecar))
               for start in range(0, reports.num_rows, batch_rows))


def day2_floor(engine: sa.Engine, table: str, reports2: pa.Table, sidecar2: pa.Table) -> dict[str, float]:
    """The server's part of day 2 into ``table`` (holding day 1), with no check and no rule: LOAD DATA of
    the new admitted rows, staging the stored keys' rows, a bare UPDATE of their scan columns."""
    with engine.connect() as conn:
        stored_keys = pa.array(conn.exec_driver_sql(f"SELECT sha256 FROM `{table}`").scalars().all(), pa.binary(32))  # noqa: S608
    stored = pc.is_in(reports2.column("sha256").cast(pa.binary(32)), value_set=stored_keys)
    new_rows = final_rows(reports2.filter(pc.invert(stored)), sidecar2)
    staged = reports2.filter(stored).select(["sha256", "detection_names", "positives", "total", "scan_date"])
    staged = staged.set_column(4, "scan_date", staged.column("scan_date").cast(pa.timestamp("us")))
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE floor_staging (sha256 BINARY(32) PRIMARY KEY, detection_names MEDIUMTEXT, positives INT, total INT, scan_date DATETIME)"
        )
    figures = {"new": raw_load_data(engine, table, new_rows), "staging": raw_load_data(engine, "floor_staging", staged)}
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"UPDATE floor_staging s JOIN `{table}` t ON t.sha256 = s.sha256 SET t.detection_names = s.detection_names, "  # noqa: S608
            "t.positives = s.positives, t.total = s.total, t.last_seen = s.scan_date, t.scan_date = s.scan_date"
        )
    figures["update"] = time.perf_counter() - started
    return figures


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


def fresh_database(server: str, database: str) -> str:
    admin = sa.create_engine(f"{server}/mysql")
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{database}`")
        conn.exec_driver_sql(f"CREATE DATABASE `{database}`")
    admin.dispose()
    url = f"{server}/{database}?local_infile=1"
    migrations.upgrade(url)
    return url


def materialize(url: str, export_root: Path, day: str, home: Path) -> tuple[float, str]:
    """``dagster asset materialize`` of one day of vt_feed/ioc_file_hashes in a fresh process: wall seconds."""
    env = {**os.environ, "TI_WAREHOUSE_URL": url, "TI_EXPORT_URI": f"file://{export_root}", "DAGSTER_HOME": str(home),
           "TI_DATA_DIR": str(home / "data")}
    args = [DAGSTER, "asset", "materialize", "-m", "ti_pipeline.definitions", "--select", "vt_feed/ioc_file_hashes", "--partition", day]
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"materialize {day} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc.stderr


def spread(samples: list[float]) -> str:
    if len(samples) == 1:
        return f"{samples[0]:.2f}"
    return f"{statistics.median(samples):.2f} ({min(samples):.2f}-{max(samples):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows per day (default 200000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server", default=settings.resolve("TI_TEST_MYSQL_URL"))
    parser.add_argument("--database", default="ti_bench_load")
    parser.add_argument("--batch-rows", type=int, default=50_000, help="loader staging batch")
    parser.add_argument("--merge-chunk-rows", type=int, default=100_000)
    parser.add_argument("--executemany-batch", type=int, default=1000)
    parser.add_argument("--no-dagster", action="store_true", help="skip the dagster asset materialize runs")
    args = parser.parse_args(argv)
    n = args.rows
    started = time.perf_counter()
    files = Files(n + n // 2)
    reports1, sidecar1 = files.day(np.arange(n), DAY1, 1)
    reports2, sidecar2 = files.day(np.arange(n // 2, n + n // 2), DAY2, 2)
    rows1 = final_rows(reports1, sidecar1)
    mean_chars = pc.mean(pc.utf8_length(reports1.column("detection_names"))).as_py()
    print(f"generated in {time.perf_counter() - started:.1f}s: {n:,} rows per day, detection_names {mean_chars:.0f} chars on "
          f"average, {rows1.num_rows:,} of day 1 admitted by the default policy; load average {os.getloadavg()}")

    log = logging.getLogger("bench.load")
    seconds: dict[str, list[float]] = defaultdict(list)
    splits: dict[str, list[tuple[float, float]]] = defaultdict(list)
    outcomes: dict[str, dict[str, int]] = {}
    floors: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="ti-bench-load-") as tmp:
        export_root = Path(tmp) / "export"
        store = LocalStore(export_root)
        write_export(store, DAY1, reports1, sidecar1)
        write_export(store, DAY2, reports2, sidecar2)
        write_export(store, EMPTY_DAY, reports1.slice(0, 0), sidecar1.slice(0, 0))
        load_settings = LoadSettings(batch_rows=args.batch_rows, merge_chunk_rows=args.merge_chunk_rows)
        for attempt in range(args.repeat):
            url = fresh_database(args.server, args.database)
            warehouse = Warehouse(url)
            engine = warehouse.engine
            copies = ("ioc_file_hashes_raw", "ioc_file_hashes_executemany", "ioc_file_hashes_pk_only", "ioc_file_hashes_batched")
            for copy in copies:
                with engine.begin() as conn:
                    conn.exec_driver_sql(f"CREATE TABLE `{copy}` LIKE ioc_file_hashes")
            with engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE ioc_file_hashes_pk_only DROP INDEX ix_ioc_file_hashes_sha1, DROP INDEX ix_ioc_file_hashes_md5")
            seconds["raw"].append(raw_load_data(engine, "ioc_file_hashes_raw", rows1))
            seconds["raw_pk_only"].append(raw_load_data(engine, "ioc_file_hashes_pk_only", rows1))
            seconds["raw_batched"].append(raw_batched(engine, "ioc_file_hashes_batched", reports1, sidecar1, args.batch_rows))
            seconds["executemany"].append(executemany(engine, "ioc_file_hashes_executemany", rows1, args.executemany_batch))
            floor = day2_floor(engine, "ioc_file_hashes_raw", reports2, sidecar2)
            seconds["day2_floor"].append(sum(floor.values()))
            floors.append(floor)
            with engine.begin() as conn:  # the loader's table alone in the buffer pool, as in production's steady state
                for table in (*copies, "floor_staging"):
                    conn.exec_driver_sql(f"DROP TABLE `{table}`")
            for label, day in (("day1", DAY1), ("day2", DAY2)):
                began = time.perf_counter()
                load = load_day(warehouse, store, day, load_settings, log=log, quarantine=lambda r: None, policy=POLICY)
                seconds[label].append(time.perf_counter() - began)
                f = load.accounting.figures
                splits[label].append((f["staging_ms"] / 1000, f["merge_ms"] / 1000))
                outcomes[label] = {
                    "read": load.accounting.read, "inserted": f["inserted"], "updated": f["updated"],
                    "kept_older": f["kept_older"], "not_imported": load.accounting.filtered["classification_not_imported"],
                    "direct_rows": f["direct_rows"], "staged_rows": f["staged_rows"],
                }
            with engine.connect() as conn:
                stored = conn.execute(sa.select(sa.func.count()).select_from(schema.ioc_file_hashes)).scalar_one()
            warehouse.dispose()
            if not args.no_dagster:
                home = Path(tmp) / f"dagster_home_{attempt}"
                home.mkdir()
                url = fresh_database(args.server, args.database)
                seconds["dagster_empty"].append(materialize(url, export_root, EMPTY_DAY, home)[0])
                seconds["dagster_day1"].append(materialize(url, export_root, DAY1, home)[0])
            print(f"repeat {attempt + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in seconds.items())
                  + f"; table {stored:,} rows; load average {os.getloadavg()}")
    admin = sa.create_engine(f"{args.server}/mysql")
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{args.database}`")
    admin.dispose()

    raw = statistics.median(seconds["raw"])
    labels = {
        "raw": "raw LOAD DATA LOCAL INFILE of day 1's admitted rows (empty copy)",
        "raw_pk_only": "raw LOAD DATA, same rows, copy without the sha1/md5 indexes (index maintenance)",
        "raw_batched": f"raw LOAD DATA of the same rows, one statement per loader batch of {args.batch_rows:,} rows read (server floor, day 1)",
        "executemany": f"executemany INSERT, {args.executemany_batch}-row batches (empty copy)",
        "day2_floor": "day 2 with no check or rule: new rows' LOAD DATA + staging + bare UPDATE (server floor, day 2)",
        "day1": "loader kernel (load_day), day 1 into the empty table",
        "day2": "loader kernel (load_day), day 2 merging into the filled table",
        "dagster_day1": "dagster asset materialize, day 1 (fresh process, whole)",
        "dagster_empty": "dagster asset materialize, an empty day (fixed cost)",
    }
    print(f"\n{n:,} rows per day, {args.repeat} repeat(s); median (min-max) seconds; rows/s = the day's {n:,} rows / median\n")
    print("| method | seconds | rows/s | vs raw LOAD DATA |\n|---|---:|---:|---:|")
    for key, label in labels.items():
        if seconds.get(key):
            median = statistics.median(seconds[key])
            print(f"| {label} | {spread(seconds[key])} | {n / median:,.0f} | {raw / median:.2f} |")
    if seconds.get("dagster_day1"):
        net = [d - e for d, e in zip(seconds["dagster_day1"], seconds["dagster_empty"], strict=True)]
        median = statistics.median(net)
        print(f"| dagster asset materialize, day 1 minus the empty day | {spread(net)} | {n / median:,.0f} | {raw / median:.2f} |")
    print()
    if floors:
        parts = ", ".join(f"{k} {spread([f[k] for f in floors])}s" for k in floors[0])
        print(f"day 2 server floor: {parts}")
    for label in ("day1", "day2"):
        staging = [s for s, _ in splits[label]]
        merge = [m for _, m in splits[label]]
        print(f"{labels[label]}: staging {spread(staging)}s, merge {spread(merge)}s; {outcomes[label]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
