"""One day of VT feed packages → the deduplicated ``vt_file_reports`` Parquet partition.

Flow, with memory bounded at every step:
1. list the day's packages ``{YYYYMMDD}/{YYYYMMDD}T{HHMM}``, exactly that name (missing minutes are
   counted, not errors; an object whose name only looks like one, ``T0023.partial``, ``T0023.tmp``,
   ``T0023~``, is an upload in progress or a leftover: listed as not read, never parsed);
2. a process pool decompresses and parses one package per task (``package.process_package``) and
   returns kept rows as plain columns; at most ``2 x workers`` packages are in flight;
3. the parent makes them an Arrow batch, splits it by sha256 prefix and appends each piece to its
   prefix bucket, an Arrow IPC file on local disk (the spill);
4. bucket by bucket, in prefix order, the newest scan of each sha256 is kept and rows stream into
   Parquet parts of ``rows_per_part`` rows in row groups of ``row_group_rows``; so the partition is
   sorted by sha256 and a bucket (a fraction of the day chosen from its compressed size) is the most
   the parent holds; the kept reports per hour of scan and the first rows, for the metadata, are
   taken from the rows as they are written, so nothing is read back;
5. the ``_SUCCESS`` manifest is published last (``core.exports.publish_manifest``), which deletes
   the objects of the partition it does not list (parts of an earlier or killed run). The manifest
   is withdrawn first, so while a partition is being rebuilt readers see no partition rather than a mix.

Within a day the newest ``scan_date`` of a sha256 wins; ties go to the larger ``positives``, then the
lexicographically smaller source package, then the remaining columns, so the output is a function of
the input alone and a re-run writes byte-identical parts.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ti_pipeline.core import keys
from ti_pipeline.core.accounting import Accounting, QuarantineRecord
from ti_pipeline.core.exports import (
    VT_FILE_REPORTS,
    VT_FILE_REPORTS_DATASET,
    ExportPart,
    Manifest,
    publish_manifest,
    withdraw,
    write_part,
)
from ti_pipeline.core.failpoints import failpoint
from ti_pipeline.core.objectstore import ObjectInfo, ObjectStore
from ti_pipeline.core.procpool import results_in_order, spawn_pool
from ti_pipeline.vt_feed import records
from ti_pipeline.vt_feed.package import PackageResult, process_package

PACKAGES_PER_DAY = 1440
# Compressed input per spill bucket when the bucket count is automatic: kept rows are a small
# fraction of the compressed size, so one bucket stays in the tens of MB whatever the day.
BUCKET_INPUT_BYTES = 128 << 20
MAX_BUCKETS = 256
SORT_KEYS = [
    ("sha256", "ascending"),
    ("scan_date", "descending"),
    ("positives", "descending"),
    ("source_package", "ascending"),
    ("detection_names", "ascending"),
    ("total", "descending"),
    ("sha1", "ascending"),
    ("md5", "ascending"),
]
# Rows of the day shown in its metadata (the first ones, in sha256 order).
SAMPLE_ROWS = 5


@dataclass(frozen=True)
class ExportOptions:
    """How a day is exported; the ``vt_file_reports`` run config is made from these fields."""

    workers: int = 0
    """Processes decompressing and parsing packages; 0 means one per core."""
    spill_buckets: int = 0
    """sha256-prefix buckets the day is spilled into before dedup; 0 sizes them from the day's compressed bytes."""
    rows_per_part: int = 2_000_000
    """Rows per Parquet part file."""
    row_group_rows: int = 500_000
    """Rows per Parquet row group."""
    spill_dir: str | None = None
    """Local folder for the spill (default: the system temp folder)."""


@dataclass
class DaySummary:
    day: date
    accounting: Accounting = field(default_factory=Accounting)
    parts: list[ExportPart] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)  # package name -> reason
    objects_not_read: list[str] = field(default_factory=list)  # in the day's folder, not packages
    worker_peak_rss_kib: int = 0
    spill_buckets: int = 0
    scan_hours: list[int] = field(default_factory=lambda: [0] * 24)  # written rows by UTC hour of scan_date
    sample_rows: list[dict] = field(default_factory=list)  # the first SAMPLE_ROWS rows written

    @property
    def figures(self):
        return self.accounting.figures


def day_folder(day: date) -> str:
    return day.strftime("%Y%m%d")


def list_packages(feed: ObjectStore, day: date) -> tuple[list[ObjectInfo], list[str]]:
    """The day's packages (exactly ``{YYYYMMDD}T{HHMM}``) in name order, and the other objects under its folder."""
    folder = day_folder(day)
    pattern = re.compile(rf"{folder}/{folder}T([01][0-9]|2[0-3])[0-5][0-9]")
    packages, others = [], []
    for info in feed.list(f"{folder}/"):
        (packages if pattern.fullmatch(info.name) else others).append(info)
    packages.sort(key=lambda i: i.name)
    return packages, sorted(i.name for i in others)


def bucket_count(packages: Iterable[ObjectInfo], requested: int = 0) -> int:
    if requested:
        return max(1, min(MAX_BUCKETS, requested))
    compressed = sum(p.size for p in packages)
    return max(1, min(MAX_BUCKETS, -(-compressed // BUCKET_INPUT_BYTES)))


def bucket_of(first_bytes: np.ndarray, buckets: int) -> np.ndarray:
    """Spill bucket of each sha256 by its first byte: contiguous prefix ranges, so bucket order is sha256 order."""
    return (first_bytes.astype(np.uint32) * buckets) >> 8


def kept_batch(result: PackageResult) -> pa.RecordBatch | None:
    """A package's kept rows (a worker's plain columns) as one Arrow batch in the export schema."""
    if not result.columns:
        return None
    sha256, sha1, md5, positives, total, scan_date_us, detection_names = result.columns
    arrays = [
        pa.array(sha256, pa.binary(32)),
        pa.array(sha1, pa.binary(20)),
        pa.array(md5, pa.binary(16)),
        pa.array(positives, pa.int32()),
        pa.array(total, pa.int32()),
        pa.array(scan_date_us, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array(detection_names, pa.string()),
        pa.repeat(pa.scalar(result.name, pa.string()), len(sha256)),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=VT_FILE_REPORTS)


def split_by_bucket(batch: pa.RecordBatch, buckets: int) -> list[tuple[int, pa.RecordBatch]]:
    """(spill bucket, its rows) of ``batch``, buckets ascending, rows in their order within a bucket."""
    sha256 = batch.column(0)
    first = np.frombuffer(sha256.buffers()[1], dtype=np.uint8, count=len(sha256) * 32)[::32]
    ids = bucket_of(first, buckets)
    order = np.argsort(ids, kind="stable")
    ordered = batch.take(pa.array(order))
    counts = np.bincount(ids, minlength=buckets)
    out, start = [], 0
    for bucket, count in enumerate(counts.tolist()):
        if count:
            out.append((bucket, ordered.slice(start, count)))
            start += count
    return out


class PackagePool:
    """Runs ``process_package`` tasks in spawned processes (fork is unsafe in threaded Dagster
    processes), results in submission order, at most ``2 x workers`` in flight; 1 worker runs inline."""

    def __init__(self, workers: int = 0):
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> PackagePool:
        if self.workers > 1:
            self._pool = spawn_pool(self.workers)
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def run(self, tasks: Iterable[tuple[str, str, records.Rules]]) -> Iterator[PackageResult]:
        if self._pool is None:
            for args in tasks:
                yield process_package(*args)
            return
        submissions = (self._pool.submit(process_package, *args) for args in tasks)
        yield from results_in_order(submissions, 2 * self.workers)


class _Spill:
    """One Arrow IPC file per sha256-prefix bucket on local disk."""

    def __init__(self, folder: Path, buckets: int):
        self.folder, self.buckets = folder, buckets
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}

    def _path(self, bucket: int) -> Path:
        return self.folder / f"bucket-{bucket:03d}.arrow"

    def add(self, bucket: int, batch: pa.RecordBatch) -> None:
        writer = self._writers.get(bucket)
        if writer is None:
            writer = self._writers[bucket] = pa.ipc.new_stream(str(self._path(bucket)), VT_FILE_REPORTS)
        writer.write_batch(batch)

    def tables(self) -> Iterator[pa.Table]:
        """Each non-empty bucket in prefix order; its file is removed once read."""
        for writer in self._writers.values():
            writer.close()
        for bucket in sorted(self._writers):
            path = self._path(bucket)
            with pa.OSFile(str(path)) as f:
                table = pa.ipc.open_stream(f).read_all()
            path.unlink()
            yield table


def _digests(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    raw = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    return raw[array.offset * 32 : (array.offset + len(array)) * 32].reshape(-1, 32)


def newest_per_sha256(table: pa.Table) -> pa.Table:
    """One row per sha256 (ascending): the newest scan, ties broken deterministically (see module doc)."""
    if table.num_rows == 0:
        return table
    ordered = table.sort_by(SORT_KEYS)
    digests = _digests(ordered.column("sha256"))
    first = np.ones(len(digests), dtype=bool)
    first[1:] = (digests[1:] != digests[:-1]).any(axis=1)
    return ordered.filter(pa.array(first))


class _PartWriter:
    """Streams rows into ``part-NNNNN.parquet`` files of whole row groups, each published atomically."""

    def __init__(self, store: ObjectStore, day: date, folder: Path, rows_per_part: int, row_group_rows: int):
        self.store, self.day, self.folder = store, day, folder
        self.row_group_rows = row_group_rows
        self.rows_per_part = max(rows_per_part, row_group_rows)
        self.parts: list[ExportPart] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._part_rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.row_group_rows:
            rows = pa.concat_tables(self._pending)
            self._write_row_group(rows.slice(0, self.row_group_rows))
            rest = rows.slice(self.row_group_rows)
            self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> list[ExportPart]:
        if self._pending_rows:
            self._write_row_group(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0
        if self._writer is not None:
            self._finish_part()
        return self.parts

    def _local(self) -> Path:
        return self.folder / f"part-{len(self.parts):05d}.parquet"

    def _write_row_group(self, rows: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                str(self._local()),
                VT_FILE_REPORTS,
                compression="zstd",
                use_dictionary=["detection_names", "source_package"],
            )
        self._writer.write_table(rows.combine_chunks(), row_group_size=self.row_group_rows)
        self._part_rows += rows.num_rows
        if self._part_rows >= self.rows_per_part:
            self._finish_part()

    def _finish_part(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        local = self._local()
        part = write_part(self.store, VT_FILE_REPORTS_DATASET, self.day, len(self.parts), local, self._part_rows)
        failpoint("vt_export.part_written")
        local.unlink()
        self.parts.append(part)
        self._part_rows = 0


def export_day(
    feed: ObjectStore,
    export: ObjectStore,
    day: date | str,
    pool: PackagePool,
    options: ExportOptions = ExportOptions(),
    on_quarantine: Callable[[list[QuarantineRecord]], None] = lambda records: None,
    on_package: Callable[[PackageResult], None] = lambda result: None,
    now: datetime | None = None,
) -> DaySummary:
    """Build one day's partition (see module doc); returns its accounting and figures.

    ``now`` is the run's clock (naive UTC, default the current time): a scan dated more than a day
    after it is rejected, since it would win "newest scan" forever.
    """
    day = keys.day(day)
    rules = records.rules(now or datetime.now(UTC).replace(tzinfo=None))
    summary = DaySummary(day)
    acc = summary.accounting
    withdraw(export, VT_FILE_REPORTS_DATASET, day)
    packages, summary.objects_not_read = list_packages(feed, day)
    buckets = summary.spill_buckets = bucket_count(packages, options.spill_buckets)
    minutes = {p.name.split("T", 1)[1][:4] for p in packages}
    kept_rows = 0
    with tempfile.TemporaryDirectory(prefix="vt-export-", dir=options.spill_dir) as tmp:
        spill = _Spill(Path(tmp), buckets)
        tasks = ((feed.uri, p.name, rules) for p in packages)
        for result in pool.run(tasks):
            acc.merge(result.accounting)
            acc.figures[f"packages_{result.format}"] += 1
            acc.figures["bytes_compressed"] += result.compressed_bytes
            acc.figures["bytes_decompressed"] += result.decompressed_bytes
            summary.worker_peak_rss_kib = max(summary.worker_peak_rss_kib, result.peak_rss_kib)
            if result.corrupt is not None:
                summary.corrupt[result.name] = result.corrupt
            batch = kept_batch(result)
            if batch is not None:
                for bucket, rows in split_by_bucket(batch, buckets):
                    spill.add(bucket, rows)
                kept_rows += batch.num_rows
            on_quarantine(result.quarantine)
            on_package(result)
        writer = _PartWriter(export, day, Path(tmp), options.rows_per_part, options.row_group_rows)
        for table in spill.tables():
            newest = newest_per_sha256(table)
            writer.add(newest)
            _describe(summary, newest)
        summary.parts = writer.close()
    acc.written = sum(p.rows for p in summary.parts)
    acc.filter(records.FILTER_SUPERSEDED, kept_rows - acc.written)
    acc.figures.update(
        {
            "packages_expected": PACKAGES_PER_DAY,
            "packages_found": len(packages),
            "packages_missing": max(0, PACKAGES_PER_DAY - len(minutes)),
            "packages_corrupt": len(summary.corrupt),
            "duplicates_collapsed": kept_rows - acc.written,
            "parts": len(summary.parts),
            "objects_not_read": len(summary.objects_not_read),
        }
    )
    _publish(export, summary)
    return summary


def _describe(summary: DaySummary, written: pa.Table) -> None:
    """Add rows about to be written to the day's hourly counts and, while it has fewer than SAMPLE_ROWS, its sample."""
    hours = np.bincount(pc.hour(written.column("scan_date")).to_numpy(), minlength=24)
    summary.scan_hours = [a + int(b) for a, b in zip(summary.scan_hours, hours, strict=True)]
    if len(summary.sample_rows) < SAMPLE_ROWS:
        summary.sample_rows += written.slice(0, SAMPLE_ROWS - len(summary.sample_rows)).to_pylist()


def _publish(export: ObjectStore, summary: DaySummary) -> None:
    """The manifest last, with the day's accounting and what was not read, for whoever audits the day."""
    details = {
        "accounting": summary.accounting.as_dict(),
        "corrupt_packages": summary.corrupt,
        "objects_not_read": summary.objects_not_read,
    }
    manifest = Manifest(VT_FILE_REPORTS_DATASET, summary.day, tuple(summary.parts), summary.accounting.written, details)
    publish_manifest(export, manifest)
