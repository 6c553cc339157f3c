"""Shapes of real VT feed lines (SPEC §2): a line is one record whatever it holds, and the shapes no other test covers."""

import bz2
import io
import json
import tarfile
from datetime import UTC, datetime

import pytest

from ti_pipeline.core.accounting import Accounting
from ti_pipeline.sample_data.vt import file_hashes, v2_package, v2_report, v3_object
from ti_pipeline.vt_feed import records
from ti_pipeline.vt_feed.package import read_package

SCAN = datetime(2020, 11, 1, 10, 0, tzinfo=UTC)
SCAN_US = int(SCAN.timestamp()) * 1_000_000
NOW = datetime(2020, 11, 2)
ENGINES = ["Avast", "ClamAV", "Kaspersky", "Sophos"]


def read(data: bytes):
    return read_package(io.BytesIO(data), "20201101/20201101T1000", "file:///feed/x", records.rules(NOW))


def good(index: int) -> bytes:
    return json.dumps(v2_report(index, SCAN, {"Avast": f"A{index}"}, engines=ENGINES)).encode()


BAD_SHA256 = json.dumps(v2_report(9, SCAN, {"Avast": "A"}, engines=ENGINES) | {"sha256": "zz"}).encode()


def kept_sha256s(result) -> list[bytes]:
    return list(result.columns[0]) if result.columns else []


@pytest.mark.parametrize("shape", ["v2", "v3"])
@pytest.mark.parametrize(
    ("lines", "kept", "rejected"),
    [
        # Two reports written on one line (a missing newline), a blank line, then a bad line: the
        # per-line decoder once read the stream as 3 values against 2 line spans and crashed the package.
        ([good(1), good(2) + good(3), b"", BAD_SHA256, good(4)], [1, 4], ["malformed_json", "invalid_sha256"]),
        ([good(1), good(2) + b" " + good(3), BAD_SHA256], [1], ["malformed_json", "invalid_sha256"]),
        # One value over two lines: each line is its own (malformed) record, and the bad line after it
        # is quarantined as itself, not as the line before.
        ([b'{"response_code": 0,', b'"sha256": "x"}', BAD_SHA256, good(4)], [4],
         ["malformed_json", "unknown_shape", "invalid_sha256"]),
    ],
)
def test_one_line_is_one_record_whatever_json_values_it_holds(shape, lines, kept, rejected):
    body = b"\n".join(lines) + b"\n"
    data = v2_package(lines) if shape == "v2" else bz2.compress(body)

    result = read(data)

    assert (result.format, result.corrupt) == (shape, None)
    assert kept_sha256s(result) == [bytes.fromhex(file_hashes(i)[0]) for i in kept]
    acc = result.accounting
    assert acc.read == sum(1 for line in lines if line.strip()) == len(kept) + len(rejected)
    assert [q.reason.split(":")[0] for q in result.quarantine] == rejected
    starts = {}
    offset = 0
    for line in lines:
        starts.setdefault(line, offset)
        offset += len(line) + 1
    bad = result.quarantine[-1]
    assert (bad.offset, bytes.fromhex(bad.excerpt)) == (starts[BAD_SHA256], BAD_SHA256[:512])


def test_a_tar_with_no_member_is_an_empty_v2_package_not_a_corrupt_one():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT):
        pass

    result = read(bz2.compress(buffer.getvalue()))

    assert (result.format, result.corrupt, result.columns, result.quarantine) == ("v2", None, (), [])
    assert (result.accounting.read, dict(result.accounting.rejected)) == (0, {})


@pytest.mark.parametrize("shape", ["v2", "v3"])
def test_a_non_utf8_byte_in_an_engine_result_is_malformed_json_as_anywhere_else(shape):
    if shape == "v2":
        line = good(1).replace(b'"A1"', b'"A1\xff"')
    else:
        line = json.dumps(v3_object(1, SCAN, {"Avast": "A1"}, engines=ENGINES)).encode().replace(b'"A1"', b'"A1\xff"')
    assert b"\xff" in line

    result = read(v2_package([line, good(2)]))

    assert kept_sha256s(result) == [bytes.fromhex(file_hashes(2)[0])]
    assert dict(result.accounting.rejected) == {"malformed_json": 1}
    assert [q.offset for q in result.quarantine] == [0]


def _verdict(report: dict):
    verdict = records.evaluate(records.DECODER.decode(json.dumps(report).encode()), Accounting(), records.rules(NOW))
    if isinstance(verdict, records.Kept):
        return (verdict.positives, verdict.total, verdict.scan_date_us, verdict.detection_names)
    return verdict


def _v2(**scans) -> dict:
    report = v2_report(1, SCAN, {"Avast": "A"}, engines=ENGINES)
    report["scans"].update(scans)
    return report


def _v3(**attributes) -> dict:
    obj = v3_object(1, SCAN, {"Avast": "A"}, engines=ENGINES)
    obj["attributes"].update(attributes)
    return obj


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        # v2 scans: only engines that detected AND name a result; a result of an engine that did not detect is ignored
        (_v2(ClamAV={"detected": False, "result": "Heur.Generic"}), (1, 4, SCAN_US, "Avast:A")),
        (_v2(ClamAV={"detected": True, "version": "1"}), (1, 4, SCAN_US, "Avast:A")),
        (_v2(ClamAV={"detected": "true", "result": "C"}), (1, 4, SCAN_US, "Avast:A;ClamAV:C")),
        # v2 numbers and codes as other JSON types
        (v2_report(1, SCAN, {"Avast": "A"}, engines=ENGINES) | {"response_code": "0"}, ("filtered", "not_found")),
        (v2_report(1, SCAN, {"Avast": "A"}, engines=ENGINES) | {"response_code": 1.0, "positives": 1.0, "total": "4"},
         (1, 4, SCAN_US, "Avast:A")),
        # v3 dates as other JSON types, and an empty attributes object
        (_v3(last_analysis_date=float(SCAN.timestamp())), (1, 4, SCAN_US, "Avast:A")),
        (_v3(last_analysis_date=str(int(SCAN.timestamp()))), (1, 4, SCAN_US, "Avast:A")),
        (_v3(last_analysis_date=10**20), ("rejected", "out_of_range:scan_date")),
        ({"id": file_hashes(1)[0], "type": "file", "attributes": {}}, ("filtered", "positives_zero")),
    ],
)
def test_real_shapes_without_another_test(report, expected):
    assert _verdict(report) == expected
