"""Reading single packages: v2 tar, v3 NDJSON, bad lines, corrupt packages, spill buckets."""

import bz2
import io
import json
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from ti_pipeline.core.exports import VT_FILE_REPORTS
from ti_pipeline.sample_data.vt import file_hashes, v2_package, v2_report, v3_object
from ti_pipeline.vt_feed import package, records
from ti_pipeline.vt_feed.export import kept_batch, split_by_bucket
from ti_pipeline.vt_feed.package import read_package

SCAN = datetime(2020, 11, 1, 10, 0, tzinfo=UTC)
NOW = datetime(2020, 11, 2)  # the run's clock, naive UTC
ENGINES = ["Avast", "ClamAV", "Kaspersky", "Sophos"]


def line(report: dict) -> bytes:
    return json.dumps(report).encode()


def read(data: bytes, name: str = "20201101/20201101T1000"):
    return read_package(io.BytesIO(data), name, f"file:///feed/{name}", records.rules(NOW))


def rows(result) -> list[dict]:
    batch = kept_batch(result)
    return pa.Table.from_batches([batch], schema=VT_FILE_REPORTS).to_pylist() if batch is not None else []


def expected_row(index: int, scan: datetime, positives: int, names: str, package: str, total: int = 4) -> dict:
    sha256, sha1, md5 = file_hashes(index)
    return {
        "sha256": bytes.fromhex(sha256),
        "sha1": bytes.fromhex(sha1),
        "md5": bytes.fromhex(md5),
        "positives": positives,
        "total": total,
        "scan_date": scan,
        "detection_names": names,
        "source_package": package,
    }


def test_v2_tar_package_rows_filters_and_quarantined_lines():
    lines = [
        line(v2_report(1, SCAN, {"Avast": "A"}, engines=ENGINES)),
        b"",
        line(v2_report(2, SCAN, {}, engines=ENGINES)),  # positives 0
        b"{not json",
        line({**v2_report(3, SCAN, {"Avast": "A"}, engines=ENGINES), "sha256": "00"}),
        b"   ",
        line(v2_report(4, SCAN + timedelta(hours=1), {"ClamAV": "C", "Sophos": "S"}, engines=ENGINES)),
    ]
    result = read(v2_package(lines))

    assert result.format == "v2"
    assert result.corrupt is None
    assert rows(result) == [
        expected_row(1, SCAN, 1, "Avast:A", "20201101/20201101T1000"),
        expected_row(4, SCAN + timedelta(hours=1), 2, "ClamAV:C;Sophos:S", "20201101/20201101T1000"),
    ]
    acc = result.accounting
    assert (acc.read, acc.written, dict(acc.filtered), dict(acc.rejected)) == (
        5,
        0,  # rows are written after the day's dedup, not per package
        {"positives_zero": 1},
        {"malformed_json": 1, "invalid_sha256": 1},
    )
    body = b"".join(x + b"\n" for x in lines)
    assert [(q.reason.split(":")[0], q.offset, bytes.fromhex(q.excerpt)) for q in result.quarantine] == [
        ("malformed_json", body.index(b"{not json"), b"{not json"),
        ("invalid_sha256", body.index(lines[4]), lines[4][:512]),  # excerpts stop at 512 bytes
    ]
    assert all(q.source == "file:///feed/20201101/20201101T1000" for q in result.quarantine)
    assert result.decompressed_bytes > len(body)  # tar header and padding included


def test_v3_package_without_trailing_newline():
    data = bz2.compress(
        line(v3_object(5, SCAN, {"Kaspersky": "K"}, engines=ENGINES))
        + b"\n"
        + line(v3_object(6, SCAN, {"Avast": "A", "Sophos": "S"}, engines=ENGINES))
    )
    result = read(data, "20201101/20201101T1001")
    assert result.format == "v3"
    assert rows(result) == [
        expected_row(5, SCAN, 1, "Kaspersky:K", "20201101/20201101T1001"),
        expected_row(6, SCAN, 2, "Avast:A;Sophos:S", "20201101/20201101T1001"),
    ]
    assert result.accounting.read == 2


def test_an_overlong_line_is_one_reject_and_reading_goes_on(monkeypatch):
    monkeypatch.setattr(package, "MAX_LINE_BYTES", 3000)
    monkeypatch.setattr(package, "CHUNK_BYTES", 700)
    long_line = b'{"junk": "' + b"x" * 5000 + b'"}'
    data = bz2.compress(long_line + b"\n" + line(v3_object(9, SCAN, {"Avast": "A"}, engines=ENGINES)) + b"\n")
    result = read(data)
    assert [r["sha256"] for r in rows(result)] == [bytes.fromhex(file_hashes(9)[0])]
    assert (result.accounting.read, dict(result.accounting.rejected)) == (2, {"line_too_long": 1})
    assert [(q.reason, q.offset) for q in result.quarantine] == [("line_too_long", 0)]


def test_tar_with_several_members_and_a_directory_reads_every_file():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo("reports")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for index in (7, 8):
            body = line(v2_report(index, SCAN, {"Avast": "A"}, engines=ENGINES)) + b"\n"
            info = tarfile.TarInfo(f"reports/{'x' * 120}-{index}.json")  # long name: a pax header
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    result = read(bz2.compress(buffer.getvalue()))
    assert [r["sha256"] for r in rows(result)] == [bytes.fromhex(file_hashes(i)[0]) for i in (7, 8)]


def _complete_lines(truncated: bytes) -> list[bytes]:
    """The lines a reader can get whole from a cut bzip2 stream: those of its complete blocks."""
    out = bz2.BZ2Decompressor().decompress(truncated)
    return [line for line in out[: out.rfind(b"\n") + 1].split(b"\n") if line]


@pytest.mark.parametrize("shape", ["v3", "v2"])
def test_a_truncated_package_keeps_every_complete_line_it_decompressed(shape):
    reports = [v3_object(i, SCAN, {"Avast": "A", "ClamAV": f"C{i}"}) for i in range(200)]
    lines = [line(r) for r in reports]
    data = bz2.compress(b"".join(x + b"\n" for x in lines), 1) if shape == "v3" else v2_package(lines, level=1)
    cut = data[: len(data) * 2 // 3]  # 100 kB blocks: the first ones are whole

    result = read(cut)

    whole = len(_complete_lines(cut))  # v2: the tar header sits in front of the first line
    assert 0 < whole < 200
    assert result.corrupt == "Compressed file ended before the end-of-stream marker was reached"
    assert [r["sha256"] for r in rows(result)] == [bytes.fromhex(file_hashes(i)[0]) for i in range(whole)]
    acc = result.accounting
    assert (acc.read, acc.filtered_total, dict(acc.rejected)) == (whole + 1, 0, {"corrupt_package": 1})
    (quarantined,) = result.quarantine
    assert quarantined.reason == "corrupt_package: Compressed file ended before the end-of-stream marker was reached"
    assert quarantined.offset == result.decompressed_bytes == len(bz2.BZ2Decompressor().decompress(cut))


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (b"[1, 2, 3]", "unknown_shape"),
        (b'[{"sha256": "ab"}]', "unknown_shape"),
        (b"42", "unknown_shape"),
        (b'"a string"', "unknown_shape"),
        (b"null", "unknown_shape"),
        (b"not json at all", "malformed_json"),
    ],
)
@pytest.mark.parametrize("shape", ["v2", "v3"])
def test_any_first_line_is_one_rejected_line_and_the_rest_of_the_package_reads(first, reason, shape):
    good = [line(v2_report(i, SCAN, {"Avast": f"A{i}"}, engines=ENGINES)) for i in range(3)]
    data = v2_package([first, *good]) if shape == "v2" else bz2.compress(b"\n".join([first, *good]) + b"\n")

    result = read(data)

    assert (result.format, result.corrupt) == (shape, None)
    assert [r["sha256"] for r in rows(result)] == [bytes.fromhex(file_hashes(i)[0]) for i in range(3)]
    acc = result.accounting
    assert (acc.read, acc.filtered_total, dict(acc.rejected)) == (4, 0, {reason: 1})
    assert [(q.reason.split(":")[0], q.offset) for q in result.quarantine] == [(reason, 0)]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"BZh91AY&SY" + b"\x00" * 40, "Invalid data stream"),
        (b"this is not bzip2", "Invalid data stream"),
        (bz2.compress(b"\x01" * 1024), "neither a tar nor NDJSON"),
    ],
)
def test_unreadable_packages_are_corrupt_not_errors(data, reason):
    result = read(data)
    assert result.corrupt == reason
    assert (result.accounting.read, dict(result.accounting.rejected)) == (1, {"corrupt_package": 1})
    assert result.columns == ()


def test_tar_with_a_bad_header_checksum_is_corrupt():
    tar = bytearray(bz2.decompress(v2_package([line(v2_report(1, SCAN, {"Avast": "A"}))])))
    tar[148:156] = b"0000000\0"  # checksum field
    result = read(bz2.compress(bytes(tar)))
    assert result.format == "v2"
    assert result.corrupt.startswith("tar: ")


def test_split_by_bucket_orders_buckets_by_sha256_prefix():
    digests = [bytes([first]) + b"\0" * 31 for first in (0xFF, 0x00, 0x80, 0x7F, 0x40)]
    batch = pa.RecordBatch.from_pylist(
        [
            {"sha256": d, "positives": 1, "scan_date": SCAN, "source_package": "p"}
            for d in digests
        ],
        schema=VT_FILE_REPORTS,
    )
    split = split_by_bucket(batch, 4)
    assert [(bucket, [r["sha256"][0] for r in b.to_pylist()]) for bucket, b in split] == [
        (0, [0x00]),
        (1, [0x7F, 0x40]),
        (2, [0x80]),
        (3, [0xFF]),
    ]


def test_a_pool_worker_imports_only_the_kernel(tmp_path):
    """A worker runs ``process_package`` in a fresh interpreter: it must not pay for pyarrow, numpy,
    SQLAlchemy, pandas or Dagster (each costs more CPU to import than a small package to read)."""
    name = "20201101/20201101T1000"
    (tmp_path / "20201101").mkdir()
    (tmp_path / name).write_bytes(v2_package([line(v2_report(1, SCAN, {"Avast": "A"}, engines=ENGINES))]))
    code = (
        "import sys, datetime\n"
        "from ti_pipeline.vt_feed import package, records\n"
        "rules = records.Rules(datetime.datetime(2020, 11, 2), 100, 100)\n"
        f"result = package.process_package({tmp_path.as_uri()!r}, {name!r}, rules)\n"
        "heavy = {'pyarrow', 'numpy', 'sqlalchemy', 'pandas', 'dagster'}\n"
        "print(len(result.columns[0]), sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "[]"]
