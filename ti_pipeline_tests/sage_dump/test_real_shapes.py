"""Real shapes of SPEC §2 (Sage dump) checked against the rules, and the screen against the full rule.

Each case is a record the production dump can carry; the expected row or reason is exact."""

from array import array
from datetime import datetime

import bson
import pytest
from bson.int64 import Int64

from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.sage_dump import rules
from ti_pipeline.sage_dump.bson_stream import Block
from ti_pipeline.sage_dump.pipeline import transform_block
from ti_pipeline.sage_dump.rules import Filtered, Rejected, RuleContext
from ti_pipeline_tests.sage_dump.test_screen import assert_same

NOW = datetime(2020, 11, 5, 12, 0, 0)
DEFAULT = RuleContext(ImportPolicy.parse(None), NOW)
EVERYTHING = RuleContext(ImportPolicy.parse("ALL"), NOW)
SHA256 = "5e938818dab3528d2bccb1d63f6f9b62413b160982a4cea8d786da822811f442"
SHA1 = "00003d6488efc24c8fe85c2414ace1340ce23fce"
MD5 = "2c8867f93974fbd8add2fd237cf48a34"
# More digits than Python's int() converts from text (sys.get_int_max_str_digits(), 4300 by default).
MANY_DIGITS = "9" * 5000


def file_doc(_id: str = SHA1, response: str = "malware.virus.trojan(14.57,14.35);NONE.null", top=None, **value) -> dict:
    report = {"_class": "com.cybereason.sage.integration.virustotal.VirusTotalFileReport", "response_code": 1,
              "sha1": SHA1, "sha256": SHA256, "md5": MD5, "scan_date": "2018-05-02 08:59:11", "positives": 2,
              "total": 67, "scans": {"A": {"detected": True, "version": "1", "update": "20180502", "result": "Trojan.X"}},
              **value}
    return {"_id": _id, "_class": "com.cybereason.sage.services.external.virustotal.VirusTotalFileClassification",
            "response": response, "firstSeen": Int64(1481460227875), "lastUpdate": Int64(1570919720277),
            "value": report, **(top or {})}


def domain_doc(positives) -> dict:
    return {"_id": "evil.example.com", "response": "maliciousClassification=malware",
            "value": {"detectedUrls": [{"url": "http://evil.example.com/", "positives": positives, "total": 70}]}}


def outcome(rule, doc, ctx=DEFAULT):
    try:
        return rule(doc, ctx)
    except (Filtered, Rejected) as exc:
        return type(exc)(*exc.args)


# ---- a number written with thousands of digits: one rejected record --------------------------------------


@pytest.mark.parametrize(
    "rule, doc, reason",
    [
        (rules.file_rep, file_doc(positives=MANY_DIGITS), "out_of_range:positives"),
        (rules.file_rep, file_doc(total=f"-{MANY_DIGITS}"), "out_of_range:total"),
        (rules.file_rep, file_doc(response_code=MANY_DIGITS), "out_of_range:response_code"),
        (rules.file_rep, file_doc(top={"firstSeen": MANY_DIGITS}), "invalid_timestamp:firstSeen"),
        (rules.domain_classification, domain_doc(MANY_DIGITS), "out_of_range:positives"),
    ],
    ids=["positives", "total", "response_code", "firstSeen", "domain-positives"],
)
def test_a_number_with_more_digits_than_int_converts_is_one_rejected_record(rule, doc, reason):
    with pytest.raises(Rejected) as raised:
        rule(doc, DEFAULT)
    assert raised.value.reason == reason


def test_such_a_number_is_quarantined_and_the_block_goes_on():
    docs = [file_doc(), file_doc(response_code=MANY_DIGITS), file_doc(sha256="a" * 64)]
    raw = [bson.encode(d) for d in docs]
    starts = array("q", [0, len(raw[0]), len(raw[0]) + len(raw[1])])
    result = transform_block("file_rep", "mem://x", Block(0, b"".join(raw), 3, starts), DEFAULT)
    assert (result.accounting.read, result.accounting.written, result.accounting.rejected) == (
        3, 2, {"out_of_range:response_code": 1})
    assert [(q.reason, q.offset) for q in result.quarantine] == [("out_of_range:response_code", len(raw[0]))]


# ---- shapes no other test covers ----------------------------------------------------------------------------


ROW = {
    "sha256": bytes.fromhex(SHA256), "sha1": bytes.fromhex(SHA1), "md5": bytes.fromhex(MD5), "classification": "MALWARE",
    "source": "SAGE_DUMP", "detection_names": "A:Trojan.X", "scan_date": datetime(2018, 5, 2, 8, 59, 11), "positives": 2,
    "total": 67, "first_seen": datetime(2016, 12, 11, 12, 43, 47, 875000), "last_seen": datetime(2019, 10, 12, 22, 35, 20, 277000),
}


@pytest.mark.parametrize(
    "doc, expected",
    [
        # _id an MD5 (upper case): the row's hashes are the report's, whatever the key.
        (file_doc(_id=MD5.upper()), ROW),
        # firstSeen/lastUpdate as double and as text.
        (file_doc(top={"firstSeen": 1481460227875.0, "lastUpdate": "1570919720277"}), ROW),
        # response_code as a double, and as text with blanks.
        (file_doc(response_code=1.0), ROW),
        (file_doc(response_code=" 1 "), ROW),
        # ML verdict present but not a usable word: the response's leading word decides.
        (file_doc(top={"vtClassifierV2Classification": None}), ROW),
        (file_doc(top={"vtClassifierV2Classification": "whitelist"}), ROW),
        (file_doc(top={"vtClassifierV2Classification": {"buildVersion": "2.0.5", "algoVersion": "2.0"}}), ROW),
        # Upper-case verdict wins over the response.
        (file_doc(response="indifferent(-1.0,-1.0);NONE.null", top={"vtClassifierV2Classification": {"classification": "RANSOMWARE"}}),
         {**ROW, "classification": "RANSOMWARE"}),
        # A response word without its tail, with odd spacing and case.
        (file_doc(response=" Hacktool "), {**ROW, "classification": "HACKTOOL"}),
        (file_doc(response="malware(0.5,0.8);TROJAN.Win32"), ROW),
        # Code 1 but no ML verdict and the response says unknown: not imported by default.
        (file_doc(response="unknown(-1.0,-1.0);NONE.null"), Filtered("classification_not_imported")),
        (file_doc(response_code=float("nan")), Rejected("invalid_number:response_code")),
        (file_doc(response_code=" 0 ", positives=float("nan")), Filtered("response_code_not_1")),
        (file_doc(positives=float("-inf")), Rejected("invalid_number:positives")),
        (file_doc(scan_date="2018-05-02T08:59:11Z"), Rejected("invalid_scan_date")),
    ],
    ids=["md5-id", "epoch-double-text", "code-double", "code-text", "verdict-null", "verdict-string",
         "verdict-without-word", "verdict-upper", "bare-word", "tail-trojan", "unknown", "code-nan", "code-0-text",
         "positives-inf", "scan-date-iso"],
)
def test_file_rep_shapes_and_the_screen_agrees(doc, expected):
    got = outcome(rules.file_rep, doc)
    if isinstance(expected, dict):
        assert got == [("ioc_file_hashes", expected)]
    else:
        assert (type(got), got.args) == (type(expected), expected.args)
    for ctx in (DEFAULT, EVERYTHING):
        assert_same("file_rep", [bson.encode(doc)], ctx)
