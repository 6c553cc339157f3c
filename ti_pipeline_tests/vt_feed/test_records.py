"""The export's rules on single reports of both feed shapes."""

import json
import math
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from ti_pipeline.core import schema, values
from ti_pipeline.core.accounting import Accounting
from ti_pipeline.sample_data.vt import NO_VERDICT, file_hashes, v2_report, v3_object
from ti_pipeline.vt_feed import records
from ti_pipeline_tests.vt_feed.numbers import NUMBER_INPUTS

SCAN = datetime(2020, 11, 1, 10, 30, 5, tzinfo=UTC)
SCAN_US = int(SCAN.timestamp()) * 1_000_000
NOW = datetime(2020, 11, 2, 0, 0)  # the run's clock, naive UTC
ENGINES = ["Avast", "ClamAV", "Kaspersky", "Sophos"]


def decode(report: dict) -> records.Report:
    return records.DECODER.decode(json.dumps(report).encode())


def evaluate(report: dict, acc: Accounting | None = None, now: datetime = NOW):
    return records.evaluate(decode(report), acc if acc is not None else Accounting(), records.rules(now))


def test_v2_report_is_kept_with_raw_digests_and_detection_names_in_report_order():
    report = v2_report(1, SCAN, {"Sophos": "Troj/Agent-A", "Avast": "Win32:Malware-gen"}, engines=ENGINES)
    sha256, sha1, md5 = file_hashes(1)
    acc = Accounting()

    kept = evaluate(report, acc)

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

    kept = evaluate(obj)

    assert kept == records.Kept(
        bytes.fromhex(sha256),
        bytes.fromhex(sha1),
        bytes.fromhex(md5),
        2,
        4,
        SCAN_US,
        "ClamAV:Win.Trojan.Agent-1;Kaspersky:HEUR:Trojan.Win32.Generic",
    )


def test_hashes_are_stripped_and_lowered_as_on_the_dump_path_and_a_bad_md5_is_left_empty_and_counted():
    report = v2_report(3, SCAN, {"Avast": "X"}, engines=ENGINES)
    report["sha256"] = f"  {report['sha256'].upper()}\n"
    report["sha1"] = f" {report['sha1'].upper()} "
    report["md5"] = "zz" * 16
    acc = Accounting()

    kept = evaluate(report, acc)

    sha256, sha1, _ = file_hashes(3)
    assert (kept.sha256, kept.sha1, kept.md5) == (bytes.fromhex(sha256), bytes.fromhex(sha1), None)
    assert kept.sha256 == values.digest_bytes(report["sha256"], "sha256")
    assert acc.figures == {"invalid_md5_left_empty": 1}


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_a_detecting_engine_without_a_result_name_is_left_out_as_on_the_dump_path(blank):
    report = v2_report(4, SCAN, {"Avast": "X", "ClamAV": blank}, engines=ENGINES)
    obj = v3_object(4, SCAN, {"Avast": "X", "ClamAV": blank}, engines=ENGINES)
    assert evaluate(report).detection_names == evaluate(obj).detection_names == "Avast:X"
    assert values.detection_names([("Avast", "X"), ("ClamAV", blank)]) == "Avast:X"
    assert (evaluate(report).positives, evaluate(obj).positives) == (2, 2)  # the engine still counts


def test_only_detecting_engines_with_a_name_make_detection_names_none_when_none_has_one():
    report = v2_report(4, SCAN, {"Avast": None}, engines=ENGINES)
    assert evaluate(report).detection_names is None


def test_v3_total_counts_only_engines_with_a_verdict():
    engines = [f"Engine{i}" for i in range(60)]
    obj = v3_object(5, SCAN, {"Engine0": "A"}, engines=engines)
    obj["attributes"]["last_analysis_results"]["Engine1"]["category"] = "suspicious"
    obj["attributes"]["last_analysis_results"]["Engine2"]["category"] = "harmless"
    no_verdict = sorted(NO_VERDICT)
    assert [obj["attributes"]["last_analysis_results"][f"Engine{i}"]["category"] for i in no_verdict] == [
        "type-unsupported", "timeout", "failure", "confirmed-timeout",
    ]
    assert evaluate(obj).total == 60 - len(no_verdict)


@pytest.mark.parametrize(
    ("change", "verdict"),
    [
        (lambda r: r.update(positives=0), ("filtered", "positives_zero")),
        (lambda r: r.update(positives=-3), ("filtered", "positives_zero")),
        (lambda r: r.update(response_code=0), ("filtered", "not_found")),
        (lambda r: r.pop("sha256"), ("rejected", "missing_sha256")),
        (lambda r: r.update(sha256="ab" * 31), ("rejected", "invalid_sha256")),
        (lambda r: r.update(sha256="gg" * 32), ("rejected", "invalid_sha256")),
        (lambda r: r.pop("scan_date"), ("rejected", "missing_scan_date")),
        (lambda r: r.update(scan_date="yesterday"), ("rejected", "invalid_scan_date")),
        (lambda r: r.update(scan_date="2020-11-01T10:30:05Z"), ("rejected", "invalid_scan_date")),
        (lambda r: r.update(scan_date="10000-01-01 00:00:00"), ("rejected", "invalid_scan_date")),
        (lambda r: r.update(scan_date="2020-+1-01 10:30:05"), ("rejected", "invalid_scan_date")),
        (lambda r: r.update(scan_date="2020-11-01 1 :30:05"), ("rejected", "invalid_scan_date")),
        (lambda r: r.update(scan_date="2020/11/01 10:30:05"), ("rejected", "invalid_scan_date")),
        (lambda r: r.update(scan_date="2020-11-01 10-30-05"), ("rejected", "invalid_scan_date")),
        (lambda r: r.update(scan_date="٢٠٢٠-11-01 10:30:05"), ("rejected", "invalid_scan_date")),
        (lambda r: r.update(scan_date="0999-12-31 23:59:59"), ("rejected", "out_of_range:scan_date")),
        (lambda r: r.update(positives=2**31), ("rejected", "out_of_range:positives")),
        (lambda r: r.update(total=2**31), ("rejected", "out_of_range:total")),
        (lambda r: r.update(total="seventy"), ("rejected", "invalid_number:total")),
        (lambda r: r.update(positives="many"), ("rejected", "invalid_number:positives")),
    ],
)
def test_v2_filters_and_rejects(change, verdict):
    report = v2_report(5, SCAN, {"Avast": "X"}, engines=ENGINES)
    change(report)
    assert evaluate(report) == verdict


def test_missing_sha256_is_rejected_even_when_positives_is_zero():
    report = v2_report(5, SCAN, {}, engines=ENGINES)
    del report["sha256"]
    assert evaluate(report) == ("rejected", "missing_sha256")


@pytest.mark.parametrize(
    ("change", "verdict"),
    [
        (lambda o: o["attributes"]["last_analysis_stats"].update(malicious=0), ("filtered", "positives_zero")),
        (lambda o: o["attributes"].pop("last_analysis_stats"), ("filtered", "positives_zero")),
        (lambda o: o["attributes"].pop("last_analysis_date"), ("rejected", "missing_scan_date")),
        (lambda o: o["attributes"].update(last_analysis_date=0), ("rejected", "missing_scan_date")),
        (lambda o: o.update(type="url"), ("rejected", "unknown_shape")),
        (lambda o: o["attributes"].update(last_analysis_date=10**15), ("rejected", "out_of_range:scan_date")),
        (lambda o: o["attributes"].update(last_analysis_date=253402300800), ("rejected", "out_of_range:scan_date")),
        (lambda o: o["attributes"].update(last_analysis_date=-(10**11)), ("rejected", "out_of_range:scan_date")),
        (lambda o: o["attributes"]["last_analysis_stats"].update(malicious=2**31), ("rejected", "out_of_range:positives")),
        (lambda o: o["attributes"]["last_analysis_stats"].update(malicious="NaN"), ("rejected", "invalid_number:positives")),
    ],
)
def test_v3_filters_and_rejects(change, verdict):
    obj = v3_object(6, SCAN, {"Avast": "X"}, engines=ENGINES)
    change(obj)
    assert evaluate(obj) == verdict


def test_a_scan_more_than_a_day_after_the_runs_clock_is_rejected_as_in_the_future():
    limit = NOW + values.FUTURE_SLACK
    at_limit = v2_report(7, limit.replace(tzinfo=UTC), {"Avast": "X"}, engines=ENGINES)
    past_limit = v2_report(7, (limit + timedelta(seconds=1)).replace(tzinfo=UTC), {"Avast": "X"}, engines=ENGINES)
    assert evaluate(at_limit).scan_date_us == int(limit.replace(tzinfo=UTC).timestamp()) * 1_000_000
    assert evaluate(past_limit) == ("rejected", "in_future:scan_date")
    v3 = v3_object(7, (limit + timedelta(seconds=1)).replace(tzinfo=UTC), {"Avast": "X"}, engines=ENGINES)
    assert evaluate(v3) == ("rejected", "in_future:scan_date")
    assert evaluate(past_limit, now=NOW + timedelta(seconds=1)).positives == 1  # a later clock accepts it


def test_detection_names_longer_than_the_column_holds_are_rejected_not_cut():
    limit = schema.TEXT_LIMITS["ioc_file_hashes"]["detection_names"]
    longest = min(limit.chars, limit.utf8_bytes)  # ASCII: one byte a character
    report = v2_report(8, SCAN, {"Avast": "x" * (longest - len("Avast:"))}, engines=ENGINES)
    assert len(evaluate(report).detection_names) == longest
    report = v2_report(8, SCAN, {"Avast": "x" * (longest - len("Avast:") + 1)}, engines=ENGINES)
    assert evaluate(report) == ("rejected", "value_too_long:detection_names")


def test_v3_sha256_falls_back_to_the_object_id():
    obj = v3_object(7, SCAN, {"Avast": "X"}, engines=ENGINES)
    del obj["attributes"]["sha256"]
    assert evaluate(obj).sha256 == bytes.fromhex(file_hashes(7)[0])


def test_an_object_of_neither_shape_is_rejected():
    assert evaluate({"hello": "world"}) == ("rejected", "unknown_shape")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"sha256": 12}', "invalid_sha256"),
        (b'{"scan_date": 20201101}', "invalid_scan_date"),
        (b'{"attributes": {"last_analysis_date": "soon"}}', "invalid_scan_date"),
        (b'{"positives": [1]}', "invalid_number:positives"),
        (b'{"positives": 1e400}', "invalid_number:positives"),
        (b'{"total": {"n": 1}}', "invalid_number:total"),
        (b'{"attributes": {"last_analysis_stats": {"malicious": [1]}}}', "invalid_number:positives"),
        (b'{"response_code": "yes"}', "invalid_field_type"),
        (b"[1, 2]", "unknown_shape"),
        (b"42", "unknown_shape"),
    ],
)
def test_type_errors_map_to_a_reason(line, reason):
    with pytest.raises(msgspec.ValidationError) as error:
        records.DECODER.decode(line)
    assert records.validation_reason(error.value) == reason


def _vt_positives(value: object) -> int | str:
    """What the VT path makes of ``value`` as a v2 report's positives: the kept count, or the reject reason."""
    report = v2_report(9, SCAN, {"Avast": "X"}, engines=ENGINES)
    report["positives"] = value
    line = json.dumps(report).encode()  # NaN and infinities become the non-JSON tokens Python writes
    try:
        decoded = records.DECODER.decode(line)
    except msgspec.ValidationError as exc:
        return records.validation_reason(exc)
    except msgspec.DecodeError:
        return records.REJECT_MALFORMED_JSON
    verdict = records.evaluate(decoded, Accounting(), records.rules(NOW))
    return verdict.positives if isinstance(verdict, records.Kept) else verdict[1]


@pytest.mark.parametrize(("value", "meaning"), NUMBER_INPUTS)
def test_numbers_parse_as_the_shared_rule_reads_them(value, meaning):
    """The same table the dump path reads through ``values.int32``: same accepted set, same ints, same reasons."""
    try:
        rule: int | str = values.int32(value, "positives")
    except values.InvalidValue as exc:
        rule = exc.reason
    got = _vt_positives(value)
    if meaning is not None:
        assert rule == got == meaning
    else:
        assert isinstance(rule, str)
        not_json = isinstance(value, float) and not math.isfinite(value)  # JSON cannot spell NaN or inf
        assert got == (records.REJECT_MALFORMED_JSON if not_json else rule)


def test_scans_are_decoded_only_for_kept_reports_and_checked_then():
    report = v2_report(10, SCAN, {"Avast": "X"}, engines=ENGINES)
    report["scans"]["ClamAV"]["detected"] = "maybe"
    assert evaluate(report) == ("rejected", "invalid_field_type")
    report["positives"] = 0
    assert evaluate(report) == ("filtered", "positives_zero")
    report["positives"], report["scans"] = 1, None
    assert evaluate(report).detection_names is None
