"""A day of packages → the partition: dedup, layout, manifest, re-runs, kills, the emulator."""

import bz2
import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ti_pipeline.core.accounting import QuarantineRecord
from ti_pipeline.core.exports import (
    VT_FILE_REPORTS,
    ExportPart,
    Manifest,
    part_name,
    read_manifest,
    success_name,
)
from ti_pipeline.core.objectstore import LocalStore, ObjectStore, open_store
from ti_pipeline.sample_data.vt import (
    file_hashes,
    v2_package,
    v2_report,
    v3_object,
    v3_package,
    write_vt_feed,
)
from ti_pipeline.vt_feed.export import (
    ExportOptions,
    PackagePool,
    export_day,
    newest_per_sha256,
)

DAY = "2020-11-01"
T10 = datetime(2020, 11, 1, 10, tzinfo=UTC)
NOW = datetime(2020, 11, 2)  # the run's clock, naive UTC
ENGINES = ["Avast", "ClamAV", "Kaspersky", "Sophos"]


def line(report: dict) -> bytes:
    return json.dumps(report).encode()


def v2(index: int, scan: datetime, detected: dict) -> bytes:
    return line(v2_report(index, scan, detected, engines=ENGINES))


def v3(index: int, scan: datetime, detected: dict) -> bytes:
    return line(v3_object(index, scan, detected, engines=ENGINES))


def manifest_of(store: ObjectStore, day: str = DAY) -> Manifest | None:
    """The day's published manifest, read as the loaders and the sidecar read it."""
    export = read_manifest(store, "vt_file_reports", day)
    return export.manifest if export is not None else None


def partition_rows(store: ObjectStore, day: str = DAY) -> list[dict]:
    tables = [pq.read_table(store.open_read(p.name)) for p in manifest_of(store, day).parts]
    return pa.concat_tables(tables).to_pylist() if tables else []


def partition_bytes(store: ObjectStore, day: str = DAY) -> dict[str, bytes]:
    return {p.name: store.read_bytes(p.name) for p in manifest_of(store, day).parts}


def export(feed: ObjectStore, out: ObjectStore, day: str = DAY, workers: int = 1, now: datetime = NOW, **options):
    quarantine: list[QuarantineRecord] = []
    with PackagePool(workers) as pool:
        summary = export_day(feed, out, day, pool, ExportOptions(workers=workers, **options), quarantine.extend, now=now)
    return summary, quarantine


@pytest.fixture
def crafted(tmp_path: Path) -> ObjectStore:
    """Four packages of 2020-11-01 with rescans and ties, plus another day's package and a stray object."""
    feed = LocalStore(tmp_path / "feed")
    feed.write_bytes(
        "20201101/20201101T0100",
        v2_package([v2(1, T10, {"Avast": "A", "ClamAV": "C"}), v2(2, T10 - timedelta(hours=1), {"Avast": "old"})]),
    )
    feed.write_bytes(
        "20201101/20201101T0200",
        v3_package(
            [
                v3(1, T10 + timedelta(hours=1), {"Avast": "A2", "ClamAV": "C2", "Sophos": "S2"}),  # newer: wins
                v3(2, T10 - timedelta(hours=2), {"Sophos": "older"}),  # older: loses
                v3(9, T10, {}),  # positives 0
            ]
        ),
    )
    feed.write_bytes(
        "20201101/20201101T0300",
        v2_package([v2(3, T10, {"Avast": "two", "ClamAV": "two"}), v2(4, T10, {"Kaspersky": "K3"})]),
    )
    feed.write_bytes(
        "20201101/20201101T0400",
        v2_package(
            [
                v2(3, T10, {"Avast": "1", "ClamAV": "2", "Kaspersky": "3", "Sophos": "4"}),  # same time, more positives
                v2(4, T10, {"Kaspersky": "K4"}),  # same time and positives: the smaller package name wins
            ]
        ),
    )
    feed.write_bytes("20201102/20201102T0000", v2_package([v2(5, T10, {"Avast": "next day"})]))
    feed.write_bytes("20201101/README", b"not a package")
    # Names that only look like a package: uploads in progress and leftovers, never parsed.
    for suffix in (".partial", ".tmp", "~"):
        feed.write_bytes(f"20201101/20201101T0500{suffix}", v2_package([v2(6, T10, {"Avast": "not read"})]))
    return feed


def row(index: int, scan: datetime, positives: int, names: str, package: str) -> dict:
    sha256, sha1, md5 = file_hashes(index)
    return {
        "sha256": bytes.fromhex(sha256),
        "sha1": bytes.fromhex(sha1),
        "md5": bytes.fromhex(md5),
        "positives": positives,
        "total": 4,
        "scan_date": scan,
        "detection_names": names,
        "source_package": package,
    }


def test_newest_scan_wins_and_ties_are_deterministic(crafted: ObjectStore, tmp_path: Path):
    out = LocalStore(tmp_path / "export")
    summary, quarantine = export(crafted, out)

    expected = [
        row(1, T10 + timedelta(hours=1), 3, "Avast:A2;ClamAV:C2;Sophos:S2", "20201101/20201101T0200"),
        row(2, T10 - timedelta(hours=1), 1, "Avast:old", "20201101/20201101T0100"),
        row(3, T10, 4, "Avast:1;ClamAV:2;Kaspersky:3;Sophos:4", "20201101/20201101T0400"),
        row(4, T10, 1, "Kaspersky:K3", "20201101/20201101T0300"),
    ]
    assert partition_rows(out) == sorted(expected, key=lambda r: r["sha256"])
    acc = summary.accounting
    assert acc.as_dict() == {
        "read": 9,
        "written": 4,
        "filtered": 5,
        "rejected": 0,
        "unaccounted": 0,
        "filtered.positives_zero": 1,
        "filtered.superseded_by_newer_scan": 4,
        "bytes_compressed": acc.figures["bytes_compressed"],
        "bytes_decompressed": acc.figures["bytes_decompressed"],
        "duplicates_collapsed": 4,
        "packages_corrupt": 0,
        "packages_expected": 1440,
        "packages_found": 4,
        "packages_missing": 1436,
        "packages_v2": 3,
        "packages_v3": 1,
        "parts": 1,
        "objects_not_read": 4,
    }
    not_read = ["20201101/20201101T0500.partial", "20201101/20201101T0500.tmp", "20201101/20201101T0500~", "20201101/README"]
    assert summary.objects_not_read == not_read
    assert quarantine == []
    manifest = manifest_of(out)
    info = out.stat(part_name("vt_file_reports", DAY, 0))
    assert manifest.parts == (ExportPart(info.name, 4, info.generation),)
    assert manifest.details["objects_not_read"] == not_read
    assert (manifest.rows, manifest.day.isoformat(), manifest.details["accounting"]["read"]) == (4, DAY, 9)
    assert sorted(i.name for i in out.list("vt_file_reports/")) == [
        "vt_file_reports/date=2020-11-01/_SUCCESS",
        "vt_file_reports/date=2020-11-01/part-00000.parquet",
    ]
    metadata = pq.read_metadata(out.open_read(info.name))
    assert metadata.schema.to_arrow_schema() == VT_FILE_REPORTS
    assert metadata.row_group(0).column(0).compression == "ZSTD"


def test_buckets_parts_and_workers_do_not_change_the_rows(tmp_path: Path):
    feed = LocalStore(tmp_path / "feed")
    write_vt_feed(feed, days=(DAY,), packages_per_day=6, reports_per_package=60)
    plain, bucketed = LocalStore(tmp_path / "plain"), LocalStore(tmp_path / "bucketed")

    one, _ = export(feed, plain)
    many, _ = export(feed, bucketed, workers=2, spill_buckets=7, rows_per_part=40, row_group_rows=20)

    assert one.accounting.as_dict() | {"parts": 0} == many.accounting.as_dict() | {"parts": 0}
    rows = partition_rows(plain)
    assert partition_rows(bucketed) == rows
    assert [r["sha256"] for r in rows] == sorted({r["sha256"] for r in rows})  # unique and sorted
    manifest = manifest_of(bucketed)
    assert [p.rows for p in manifest.parts] == [40] * (len(rows) // 40) + ([len(rows) % 40] if len(rows) % 40 else [])
    first = pq.read_metadata(bucketed.open_read(manifest.parts[0].name))
    assert [first.row_group(i).num_rows for i in range(first.num_row_groups)] == [20, 20]
    assert 0 < many.worker_peak_rss_kib


def test_the_summary_describes_the_written_rows_without_reading_them_back(tmp_path: Path):
    feed = LocalStore(tmp_path / "feed")
    write_vt_feed(feed, days=(DAY,), packages_per_day=6, reports_per_package=60)
    out = LocalStore(tmp_path / "export")

    summary, _ = export(feed, out, workers=2, spill_buckets=64)  # small buckets: the sample spans several

    rows = partition_rows(out)
    hours = [0] * 24
    for r in rows:
        hours[r["scan_date"].hour] += 1
    assert summary.scan_hours == hours
    assert len({h for h, n in enumerate(hours) if n}) > 1 and sum(hours) == summary.accounting.written
    assert summary.sample_rows == rows[:5]


def test_rerun_is_identical_and_deletes_parts_it_no_longer_writes(tmp_path: Path):
    feed = LocalStore(tmp_path / "feed")
    write_vt_feed(feed, days=(DAY,))
    out = LocalStore(tmp_path / "export")
    export(feed, out, rows_per_part=10, row_group_rows=10)
    assert len(manifest_of(out).parts) > 2

    export(feed, out)
    first = partition_bytes(out)
    export(feed, out)

    assert partition_bytes(out) == first
    assert sorted(i.name for i in out.list("vt_file_reports/")) == sorted([*first, success_name("vt_file_reports", DAY)])


KILLED_EXPORT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from ti_pipeline.core.objectstore import LocalStore
    from ti_pipeline.vt_feed.export import ExportOptions, PackagePool, export_day

    class DiesOnSecondPart(LocalStore):
        parts = 0

        def write_file(self, name, local_path, **kwargs):
            info = super().write_file(name, local_path, **kwargs)
            if name.endswith(".parquet"):
                DiesOnSecondPart.parts += 1
                if DiesOnSecondPart.parts == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return info

    feed, out, day = LocalStore(Path(sys.argv[1])), DiesOnSecondPart(Path(sys.argv[2])), sys.argv[3]
    with PackagePool(1) as pool:
        export_day(feed, out, day, pool, ExportOptions(rows_per_part=10, row_group_rows=10))
    """
)


def test_a_run_killed_mid_write_leaves_no_partition_and_the_rerun_is_identical(tmp_path: Path):
    feed = LocalStore(tmp_path / "feed")
    write_vt_feed(feed, days=(DAY,))
    clean, killed = LocalStore(tmp_path / "clean"), LocalStore(tmp_path / "killed")
    export(feed, clean, rows_per_part=10, row_group_rows=10)
    export(feed, killed)  # a complete older version, so the kill also has something to break

    process = subprocess.run(
        [sys.executable, "-c", KILLED_EXPORT, str(feed.root), str(killed.root), DAY],
        capture_output=True,
        timeout=120,
    )

    assert process.returncode == -9, process.stderr.decode()
    assert manifest_of(killed) is None  # neither the old nor a partial partition is readable
    assert killed.stat(part_name("vt_file_reports", DAY, 1)) is not None  # the killed run's stray parts
    export(feed, killed, rows_per_part=10, row_group_rows=10)
    assert partition_bytes(killed) == partition_bytes(clean)
    assert {i.name for i in killed.list("vt_file_reports/")} == {i.name for i in clean.list("vt_file_reports/")}


def test_a_day_without_packages_is_an_empty_partition(tmp_path: Path):
    out = LocalStore(tmp_path / "export")
    summary, _ = export(LocalStore(tmp_path / "feed"), out, day="2021-01-01")
    assert manifest_of(out, "2021-01-01").parts == ()
    assert (summary.figures["packages_found"], summary.figures["packages_missing"]) == (0, 1440)


def test_dedup_keeps_one_row_per_sha256():
    table = pa.Table.from_pylist(
        [
            {"sha256": b"\x02" * 32, "positives": 1, "scan_date": T10, "source_package": "b"},
            {"sha256": b"\x01" * 32, "positives": 1, "scan_date": T10, "source_package": "b"},
            {"sha256": b"\x02" * 32, "positives": 1, "scan_date": T10, "source_package": "a"},
            {"sha256": b"\x02" * 32, "positives": 9, "scan_date": T10 - timedelta(seconds=1), "source_package": "c"},
        ],
        schema=VT_FILE_REPORTS,
    )
    assert [(r["sha256"][0], r["source_package"]) for r in newest_per_sha256(table).to_pylist()] == [(1, "b"), (2, "a")]


def test_gcs_path_on_the_emulator_matches_the_folder_path(gcs_bucket: str, tmp_path: Path):
    feed, out = open_store(f"gs://{gcs_bucket}/feed"), open_store(f"gs://{gcs_bucket}/export")
    local_feed, local_out = LocalStore(tmp_path / "feed"), LocalStore(tmp_path / "export")
    for store in (feed, local_feed):
        write_vt_feed(store, days=("2020-11-01", "2020-11-02"), packages_per_day=4, reports_per_package=20)

    summary, quarantine = export(feed, out, day="2020-11-02", workers=2)
    local, _ = export(local_feed, local_out, day="2020-11-02")

    assert partition_rows(out, "2020-11-02") == partition_rows(local_out, "2020-11-02")
    assert summary.accounting.as_dict() == local.accounting.as_dict()
    assert summary.figures["packages_corrupt"] == 1
    assert any(q.source.startswith(f"gs://{gcs_bucket}/feed/20201102/") for q in quarantine)
    assert [p.generation for p in manifest_of(out, "2020-11-02").parts] == [
        out.stat(p.name).generation for p in manifest_of(out, "2020-11-02").parts
    ]


# ---- no bad line fails a day ---------------------------------------------------------------------

GOOD_V2 = [v2(1, T10, {"Avast": "A1", "ClamAV": None}), v2(2, T10, {"Sophos": "S2"})]
GOOD_V3 = [v3(3, T10, {"Kaspersky": "K3"})]


def _good_rows() -> list[dict]:
    return sorted(
        [
            row(1, T10, 2, "Avast:A1", "20201101/20201101T0100"),
            row(2, T10, 1, "Sophos:S2", "20201101/20201101T0100"),
            row(3, T10, 1, "Kaspersky:K3", "20201101/20201101T0200"),
        ],
        key=lambda r: r["sha256"],
    )


def _with(index: int, **changes) -> bytes:
    report = v2_report(index, T10, {"Avast": "bad"}, engines=ENGINES)
    report.update(changes)
    return line(report)


def _v3_dated(index: int, epoch_seconds: int) -> bytes:
    obj = v3_object(index, T10, {"Avast": "bad"}, engines=ENGINES)
    obj["attributes"]["last_analysis_date"] = epoch_seconds
    return line(obj)


DETECTION_LIMIT = 16 << 20  # MEDIUMTEXT: detection_names on TiDB/MySQL

BAD_LINES = {
    "positives above int32": (lambda: _with(7, positives=2**31), "out_of_range:positives"),
    "total above int32": (lambda: _with(7, total=2**31), "out_of_range:total"),
    "positives a word": (lambda: _with(7, positives="many"), "invalid_number:positives"),
    "positives NaN as text": (lambda: _with(7, positives="NaN"), "invalid_number:positives"),
    "positives NaN": (lambda: _with(7, positives=float("nan")), "malformed_json"),
    "positives infinite": (lambda: _with(7).replace(b'"positives": 1', b'"positives": 1e400'), "invalid_number:positives"),
    "scan date past 9999 (epoch seconds 10**15)": (lambda: _v3_dated(7, 10**15), "out_of_range:scan_date"),
    "scan date in year 10000": (lambda: _v3_dated(7, 253402300800), "out_of_range:scan_date"),
    "scan date before year 1000": (lambda: _with(7, scan_date="0999-12-31 23:59:59"), "out_of_range:scan_date"),
    "scan date a day and a second ahead": (lambda: _with(7, scan_date="2020-11-03 00:00:01"), "in_future:scan_date"),
    "detection names longer than the column": (
        lambda: line(v2_report(7, T10, {"Avast": "x" * DETECTION_LIMIT}, engines=ENGINES)),
        "value_too_long:detection_names",
    ),
    "a JSON array": (lambda: b"[" + GOOD_V2[0] + b"]", "unknown_shape"),
    "a JSON scalar": (lambda: b"42", "unknown_shape"),
    "not JSON": (lambda: b"\xff\xfe garbage", "malformed_json"),
}


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_a_bad_line_as_a_packages_first_line_is_one_reject_and_the_day_goes_on(tmp_path: Path, name: str):
    make, reason = BAD_LINES[name]
    bad = make()
    feed, out = LocalStore(tmp_path / "feed"), LocalStore(tmp_path / "export")
    feed.write_bytes("20201101/20201101T0100", v2_package([bad, *GOOD_V2]))
    feed.write_bytes("20201101/20201101T0200", v3_package(GOOD_V3))

    summary, quarantine = export(feed, out)

    assert partition_rows(out) == _good_rows()
    acc = summary.accounting
    assert (acc.read, acc.written, acc.filtered_total, dict(acc.rejected), acc.unaccounted) == (4, 3, 0, {reason: 1}, 0)
    assert [(q.reason.split(": ")[0], q.offset, q.source) for q in quarantine] == [
        (reason, 0, feed.url_of("20201101/20201101T0100"))  # offset of the line in the package's NDJSON
    ]
    assert bytes.fromhex(quarantine[0].excerpt) == bad[:512]
    assert summary.figures["packages_corrupt"] == 0


def test_a_truncated_package_keeps_its_complete_lines_and_the_day_goes_on(tmp_path: Path):
    feed, out = LocalStore(tmp_path / "feed"), LocalStore(tmp_path / "export")
    many = [line(v3_object(100 + i, T10, {"Avast": f"A{i}"})) for i in range(150)]  # every engine: ~8 KB a line
    data = v2_package(many, level=1)
    cut = data[: len(data) // 2]
    feed.write_bytes("20201101/20201101T0100", cut)
    feed.write_bytes("20201101/20201101T0200", v3_package(GOOD_V3))
    decompressed = bz2.BZ2Decompressor().decompress(cut)
    whole = decompressed[: decompressed.rfind(b"\n") + 1].count(b"\n")

    summary, quarantine = export(feed, out)

    assert 0 < whole < 150
    rows = partition_rows(out)
    assert {r["sha256"] for r in rows} == {bytes.fromhex(file_hashes(i)[0]) for i in [*range(100, 100 + whole), 3]}
    acc = summary.accounting
    assert (acc.read, acc.written, dict(acc.rejected), acc.unaccounted) == (whole + 2, whole + 1, {"corrupt_package": 1}, 0)
    assert [(q.reason, q.offset) for q in quarantine] == [
        ("corrupt_package: Compressed file ended before the end-of-stream marker was reached", len(decompressed))
    ]
    assert summary.corrupt == {"20201101/20201101T0100": "Compressed file ended before the end-of-stream marker was reached"}


def test_the_sample_feed_days_balance_with_every_quirk_counted(tmp_path: Path):
    feed = LocalStore(tmp_path / "feed")
    write_vt_feed(feed)
    reasons = {}
    for day in ("2020-11-01", "2020-11-02", "2020-11-03"):
        summary, _ = export(feed, LocalStore(tmp_path / "export"), day=day, now=datetime(2020, 11, 4))
        assert summary.accounting.unaccounted == 0
        reasons[day] = dict(summary.accounting.rejected)
    every_day = {
        "in_future:scan_date": 1, "invalid_number:positives": 1, "invalid_sha256": 1, "malformed_json": 2,
        "missing_sha256": 1, "out_of_range:positives": 1, "out_of_range:scan_date": 1,
    }
    assert reasons == {
        "2020-11-01": every_day,
        "2020-11-02": {**every_day, "corrupt_package": 1},
        "2020-11-03": {**every_day, "unknown_shape": 1},
    }
