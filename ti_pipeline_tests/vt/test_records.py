"""The export's rules on single reports of both feed shapes."""

import json
from datetime import UTC, datetime

import msgspec
import pytest

from ti_pipeline.accounting import Accounting
from ti_pipeline.sample_data.vt import file_hashes, v2_report, v3_object
from ti_pipeline.vt import records

SCAN = datetime(2020, 11, 1, 10, 30, 5, tzinfo=UTC)
SCAN_US = int(SCAN.timestamp()) * 1_000_000
ENGINES = ["Avast", "ClamAV", "Kaspersky", "Sophos"]


def decode(report: dict) -> records.Report:
    return records.DECODER.decode(json.dumps(report).encode())


def test_v2_report_is_kept_with_raw_digests_and_detection_names_in_report_order():
    report = v2_report(1, SCAN, {"Sophos": "Troj/Agent-A", "Avast": "Win32:Malware-gen"}, engines=ENGINES)
    sha256, sha1, md5 = file_hashes(1)
    acc = Accounting()

    kept = records.evaluate(decode(report), acc)

    assert kept == records.Kept(
        bytes.fromhex(sha256),
        bytes.fromhex(sha1),
        bytes.fromhex(md5),
        2,
        4,
        SCAN_US,
        "Avast:Win32:Malware-gen;Sophos:Troj/Agent-A",
    )
    assert not acc.figures


def test_v3_object_is_kept_from_last_analysis_fields():
    obj = v3_object(2, SCAN, {"ClamAV": "Win.Trojan.Agent-1", "Kaspersky": "HEUR:Trojan.Win32.Generic"}, engines=ENGINES)
    sha256, sha1, md5 = file_hashes(2)

    kept = records.evaluate(decode(obj), Accounting())

    assert kept == records.Kept(
        bytes.fromhex(sha256),
        bytes.fromhex(sha1),
        bytes.fromhex(md5),
        2,
        4,
        SCAN_US,
        "ClamAV:Win.Trojan.Agent-1;Kaspersky:HEUR:Trojan.Win32.Generic",
    )


def test_upper_case_hashes_are_lowered_and_a_bad_md5_is_left_empty_and_counted():
    report = v2_report(3, SCAN, {"Avast": "X"}, engines=ENGINES)
    report["sha256"] = report["sha256"].upper()
    report["md5"] = "zz" * 16
    acc = Accounting()

    kept = records.evaluate(decode(report), acc)

    assert kept.sha256 == bytes.fromhex(file_hashes(3)[0])
    assert kept.md5 is None
    assert acc.figures == {"invalid_md5_left_empty": 1}


def test_detected_engine_without_result_is_named_alone():
    report = v2_report(4, SCAN, {"Avast": "X"}, engines=ENGINES)
    report["scans"]["ClamAV"] = {"detected": True, "result": None}
    assert records.evaluate(decode(report), Accounting()).detection_names == "Avast:X;ClamAV"


@pytest.mark.parametrize(
    ("change", "verdict"),
    [
        (lambda r: r.update(positives=0), ("filtered", "positives_zero")),
        (lambda r: r.update(response_code=0), ("filtered", "not_found")),
        (lambda r: r.pop("sha256"), ("rejected", "missing_sha256")),
        (lambda r: r.update(sha256="ab" * 31), ("rejected", "invalid_sha256")),
        (lambda r: r.update(sha256="gg" * 32), ("rejected", "invalid_sha256")),
        (lambda r: r.pop("scan_date"), ("rejected", "missing_scan_date")),
    ],
)
def test_v2_filters_and_rejects(change, verdict):
    report = v2_report(5, SCAN, {"Avast": "X"}, engines=ENGINES)
    change(report)
    assert records.evaluate(decode(report), Accounting()) == verdict


def test_missing_sha256_is_rejected_even_when_positives_is_zero():
    report = v2_report(5, SCAN, {}, engines=ENGINES)
    del report["sha256"]
    assert records.evaluate(decode(report), Accounting()) == ("rejected", "missing_sha256")


@pytest.mark.parametrize(
    ("change", "verdict"),
    [
        (lambda o: o["attributes"]["last_analysis_stats"].update(malicious=0), ("filtered", "positives_zero")),
        (lambda o: o["attributes"].pop("last_analysis_stats"), ("filtered", "positives_zero")),
        (lambda o: o["attributes"].pop("last_analysis_date"), ("rejected", "missing_scan_date")),
        (lambda o: o.update(type="url"), ("rejected", "unknown_shape")),
    ],
)
def test_v3_filters_and_rejects(change, verdict):
    obj = v3_object(6, SCAN, {"Avast": "X"}, engines=ENGINES)
    change(obj)
    assert records.evaluate(decode(obj), Accounting()) == verdict


def test_v3_sha256_falls_back_to_the_object_id():
    obj = v3_object(7, SCAN, {"Avast": "X"}, engines=ENGINES)
    del obj["attributes"]["sha256"]
    assert records.evaluate(decode(obj), Accounting()).sha256 == bytes.fromhex(file_hashes(7)[0])


def test_an_object_of_neither_shape_is_rejected():
    assert records.evaluate(decode({"hello": "world"}), Accounting()) == ("rejected", "unknown_shape")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"sha256": 12}', "invalid_sha256"),
        (b'{"scan_date": "yesterday"}', "invalid_scan_date"),
        (b'{"attributes": {"last_analysis_date": "soon"}}', "invalid_scan_date"),
        (b'{"positives": "many"}', "invalid_field_type"),
        (b"[1, 2]", "unknown_shape"),
    ],
)
def test_type_errors_map_to_a_reason(line, reason):
    with pytest.raises(msgspec.ValidationError) as error:
        records.DECODER.decode(line)
    assert records.validation_reason(error.value) == reason


def test_numbers_written_as_floats_or_strings_still_decode():
    report = v2_report(8, SCAN, {"Avast": "X"}, engines=ENGINES)
    report["positives"], report["total"] = 1.0, "4"
    kept = records.evaluate(decode(report), Accounting())
    assert (kept.positives, kept.total) == (1, 4)


def test_scans_are_decoded_only_for_kept_reports_and_checked_then():
    report = v2_report(10, SCAN, {"Avast": "X"}, engines=ENGINES)
    report["scans"]["ClamAV"]["detected"] = "maybe"
    assert records.evaluate(decode(report), Accounting()) == ("rejected", "invalid_field_type")
    report["positives"] = 0
    assert records.evaluate(decode(report), Accounting()) == ("filtered", "positives_zero")
    report["positives"], report["scans"] = 1, None
    assert records.evaluate(decode(report), Accounting()).detection_names is None
