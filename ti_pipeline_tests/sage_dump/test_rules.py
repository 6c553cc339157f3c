from datetime import datetime

import pytest
from bson.int64 import Int64

from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.sage_dump import rules
from ti_pipeline.sage_dump.rules import Filtered, Rejected, RuleContext

SHA256 = "a" * 64
SHA1 = "b" * 40
MD5 = "c" * 32
NOW = datetime(2020, 11, 5, 12, 0, 0)
DEFAULT = RuleContext(ImportPolicy.parse(None), NOW)
EVERYTHING = RuleContext(ImportPolicy.parse("ALL"), NOW)


def file_doc(**value_overrides):
    value = {
        "response_code": 1,
        "sha256": SHA256,
        "sha1": SHA1,
        "md5": MD5,
        "scan_date": "2020-10-01 12:30:00",
        "positives": 2,
        "total": 3,
        "scans": {
            "EngineA": {"detected": True, "version": "1", "update": "x", "result": "Trojan.X"},
            "EngineB": {"detected": False, "version": "1", "update": "x"},
            "EngineC": {"detected": True, "version": "1", "update": "x", "result": "Emotet"},
        },
    }
    value.update(value_overrides)
    return {"_id": SHA1, "response": "malware.virus.trojan(14.57,14.35);NONE.null", "firstSeen": 1600000000000,
            "lastUpdate": Int64(1601000000000), "value": value}


def with_verdict(doc: dict, classification) -> dict:
    return {**doc, "vtClassifierV2Classification": {"classification": classification, "algoVersion": "2.0"}}


def test_file_rep_row():
    [(table, row)] = rules.file_rep(file_doc(), DEFAULT)
    assert table == "ioc_file_hashes"
    assert row == {
        "sha256": bytes.fromhex(SHA256),
        "sha1": bytes.fromhex(SHA1),
        "md5": bytes.fromhex(MD5),
        "classification": "MALWARE",
        "source": "SAGE_DUMP",
        "detection_names": "EngineA:Trojan.X;EngineC:Emotet",
        "scan_date": datetime(2020, 10, 1, 12, 30),
        "positives": 2,
        "total": 3,
        "first_seen": datetime(2020, 9, 13, 12, 26, 40),
        "last_seen": datetime(2020, 9, 25, 2, 13, 20),
    }


@pytest.mark.parametrize(
    "response, expected",
    [
        ("unknown(-1.0,-1.0);NONE.null", "UNKNOWN"),
        ("indifferent(-1.0,-1.0);NONE.null", "INDIFFERENT"),
        ("whitelist(-1.0,-1.0);NONE.null", "WHITELIST"),
        ("ransomware.x(1,1);NONE.null", "RANSOMWARE"),
        ("unwanted.adware(3.2,3.0);NONE.null", "UNWANTED"),
        ("  hacktool.generic(5.0,5.0);NONE.null", "HACKTOOL"),
    ],
)
def test_without_a_verdict_the_classification_is_the_leading_word(response, expected):
    doc = {**file_doc(), "response": response}
    assert rules.file_rep(doc, EVERYTHING)[0][1]["classification"] == expected


@pytest.mark.parametrize(
    "verdict, expected",
    [("whitelist", "WHITELIST"), ("indifferent", "INDIFFERENT"), ("ransomware", "RANSOMWARE"),
     ("unwanted", "UNWANTED"), ("hacktool", "HACKTOOL"), ("malware", "MALWARE")],
)
def test_the_ml_verdict_wins_over_the_response(verdict, expected):
    doc = with_verdict({**file_doc(), "response": "indifferent(-1.0,-1.0);NONE.null"}, verdict)
    assert rules.file_rep(doc, EVERYTHING)[0][1]["classification"] == expected


def test_an_empty_verdict_falls_back_to_the_response():
    doc = with_verdict(file_doc(), " ")
    assert rules.file_rep(doc, DEFAULT)[0][1]["classification"] == "MALWARE"


@pytest.mark.parametrize(
    "doc",
    [
        {**file_doc(), "response": "unknown(-1.0,-1.0);NONE.null"},
        {**file_doc(), "response": "indifferent(-1.0,-1.0);NONE.null"},
        {**file_doc(), "response": "whitelist(-1.0,-1.0);NONE.null"},
        with_verdict(file_doc(), "whitelist"),  # the verdict says whitelist: skipped whatever the response
        with_verdict(file_doc(), "indifferent"),
    ],
    ids=["unknown", "indifferent", "whitelist", "verdict-whitelist", "verdict-indifferent"],
)
def test_default_policy_filters_what_is_not_threat_relevant(doc):
    with pytest.raises(Filtered) as raised:
        rules.file_rep(doc, DEFAULT)
    assert raised.value.rule == "classification_not_imported"


@pytest.mark.parametrize("ctx", [DEFAULT, EVERYTHING], ids=["default", "ALL"])
@pytest.mark.parametrize("response", [None, 42, "   "], ids=["missing", "wrong-type", "blank"])
def test_no_classification_is_never_imported(ctx, response):
    doc = {**file_doc(), "response": response}
    with pytest.raises(Filtered) as raised:
        rules.file_rep(doc, ctx)
    assert raised.value.rule == "classification_not_imported"


def test_policy_admits_a_chosen_set():
    ctx = RuleContext(ImportPolicy.parse("WHITELIST"), NOW)
    assert rules.file_rep(with_verdict(file_doc(), "whitelist"), ctx)[0][1]["classification"] == "WHITELIST"
    with pytest.raises(Filtered, match="classification_not_imported"):
        rules.file_rep(file_doc(), ctx)


@pytest.mark.parametrize(
    "doc",
    [{**file_doc(), "response": "foo.bar(1,1);NONE.null"}, {**file_doc(), "response": "(1,1)"},
     with_verdict(file_doc(), "benignish")],
    ids=["response-word", "no-word", "verdict-word"],
)
def test_unknown_classification_word_is_rejected(doc):
    with pytest.raises(Rejected) as raised:
        rules.file_rep(doc, EVERYTHING)
    assert raised.value.reason == "unknown_classification"


@pytest.mark.parametrize("number", [2, Int64(2), 2.0, "2", " 2.0 "])
def test_numbers_of_any_bson_type_or_as_text(number):
    row = rules.file_rep(file_doc(positives=number, total=number), DEFAULT)[0][1]
    assert row["positives"] == 2 and row["total"] == 2 and type(row["positives"]) is int


def test_missing_or_wrongly_typed_optional_fields_become_null():
    doc = file_doc(sha1="nothex", md5=5, scans="x")
    del doc["value"]["positives"], doc["value"]["scan_date"]
    doc.pop("firstSeen")
    row = rules.file_rep(doc, DEFAULT)[0][1]
    assert (row["sha1"], row["md5"], row["detection_names"], row["positives"], row["scan_date"], row["first_seen"]) == (
        None, None, None, None, None, None)


def test_detection_names_only_of_engines_that_detected_and_name_it():
    scans = {
        "A": {"detected": True, "result": "Trojan.X"},
        "B": {"detected": True, "result": ""},
        "C": {"detected": True, "result": None},
        "D": {"detected": True},
        "E": {"detected": False, "result": "Leftover.Name"},
        "F": {"detected": "true", "result": "Not.A.Bool"},
        "G": "not an entry",
        "H": {"detected": True, "result": "Emotet"},
    }
    assert rules.file_rep(file_doc(scans=scans), DEFAULT)[0][1]["detection_names"] == "A:Trojan.X;H:Emotet"


def test_upper_case_hash_is_normalised():
    row = rules.file_rep(file_doc(sha256=SHA256.upper(), sha1=f" {SHA1.upper()} "), DEFAULT)[0][1]
    assert (row["sha256"], row["sha1"]) == (bytes.fromhex(SHA256), bytes.fromhex(SHA1))


@pytest.mark.parametrize(
    "doc, reason",
    [
        (file_doc(positives=2**31), "out_of_range:positives"),
        (file_doc(total=Int64(-(2**31) - 1)), "out_of_range:total"),
        (file_doc(total="abc"), "invalid_number:total"),
        (file_doc(total="\u0661\u0664"), "invalid_number:total"),
        (file_doc(positives=float("nan")), "invalid_number:positives"),
        (file_doc(positives=2.5), "invalid_number:positives"),
        ({**file_doc(), "firstSeen": float("nan")}, "invalid_timestamp:firstSeen"),
        ({**file_doc(), "lastUpdate": float("inf")}, "invalid_timestamp:lastUpdate"),
        ({**file_doc(), "lastUpdate": 10**18}, "out_of_range:lastUpdate"),
        ({**file_doc(), "firstSeen": "yesterday"}, "invalid_timestamp:firstSeen"),
        (file_doc(scan_date="9999-99-99 00:00:00"), "invalid_scan_date"),
        (file_doc(scan_date=17), "invalid_scan_date"),
        (file_doc(scan_date="2020-11-08 12:00:01"), "in_future:scan_date"),
    ],
    ids=["positives-int32", "total-int32", "total-abc", "total-arabic-indic-digits", "positives-nan", "positives-fraction", "firstSeen-nan",
         "lastUpdate-inf", "lastUpdate-1e18", "firstSeen-word", "scan_date-9999-99-99", "scan_date-type",
         "scan_date-future"],
)
def test_values_no_column_can_hold_reject_the_record(doc, reason):
    with pytest.raises(Rejected) as raised:
        rules.file_rep(doc, DEFAULT)
    assert raised.value.reason == reason


def test_a_scan_date_up_to_a_day_ahead_is_kept():
    assert rules.file_rep(file_doc(scan_date="2020-11-06 12:00:00"), DEFAULT)[0][1]["scan_date"] == datetime(2020, 11, 6, 12)


@pytest.mark.parametrize(
    "doc, outcome",
    [
        (file_doc(response_code=0), Filtered("response_code_not_1")),
        (file_doc(response_code=Int64(-2)), Filtered("response_code_not_1")),
        (file_doc(response_code=0.0), Filtered("response_code_not_1")),
        ({**file_doc(response_code=0), "response": "foo(1,1)"}, Filtered("response_code_not_1")),
        (file_doc(response_code="abc"), Rejected("invalid_number:response_code")),
        (file_doc(response_code=None), Rejected("missing_response_code")),
        (file_doc(sha256=None), Rejected("missing_sha256")),
        (file_doc(sha256=12), Rejected("invalid_sha256")),
        (file_doc(sha256="zz" + SHA256[2:]), Rejected("invalid_sha256")),
        (file_doc(sha256=SHA256[:-1]), Rejected("invalid_sha256")),
        ({**file_doc(sha256="zz"), "response": "whitelist(1,1)"}, Filtered("classification_not_imported")),
        ({**file_doc(positives=2**40), "response": "unknown(-1,-1)"}, Filtered("classification_not_imported")),
        ({**file_doc(), "value": "x"}, Rejected("missing_value")),
    ],
    ids=["code-0", "code-int64", "code-double", "code-0-before-word", "code-abc", "code-missing", "sha256-missing",
         "sha256-type", "sha256-hex", "sha256-length", "policy-before-sha256", "policy-before-values", "value"],
)
def test_file_rep_rule_order(doc, outcome):
    with pytest.raises(type(outcome)) as raised:
        rules.file_rep(doc, DEFAULT)
    assert raised.value.args == outcome.args


def test_response_code_as_text_is_a_number():
    assert rules.file_rep(file_doc(response_code="1"), DEFAULT)[0][1]["classification"] == "MALWARE"


def domain_doc(kind, positives=(), domain="Evil.Example.COM", **top):
    return {
        "_id": domain,
        "response": f"maliciousClassification={kind}",
        "value": {"detectedUrls": [{"url": "http://x/", "positives": p, "total": 70} for p in positives]},
        **top,
    }


@pytest.mark.parametrize(
    "kind, positives, classification, best",
    [
        ("malware", [1, 5.0, Int64(3), "4"], "MALWARE", 5),
        ("whitelist", [], "WHITELIST", None),
        ("phishing", [0], "PHISHING", 0),
        ("indifferent", [0, 2], "AV_DETECTED", 2),
    ],
)
def test_domain_kept(kind, positives, classification, best):
    [(table, row)] = rules.domain_classification(domain_doc(kind, positives), DEFAULT)
    assert table == "ioc_domains"
    assert (row["domain"], row["classification"], row["positives"], row["detected_urls"]) == (
        "evil.example.com", classification, best, len(positives))


@pytest.mark.parametrize(
    "doc, outcome",
    [
        (domain_doc("unknown", [9]), Filtered("unknown")),
        (domain_doc("unknown", [2**40]), Filtered("unknown")),
        (domain_doc("indifferent", [0, 0]), Filtered("indifferent_without_detections")),
        (domain_doc("indifferent", []), Filtered("indifferent_without_detections")),
        (domain_doc("malware", domain="not a domain"), Rejected("invalid_domain")),
        (domain_doc("malware", domain="intranet"), Rejected("invalid_domain")),
        (domain_doc("malware", domain=12), Rejected("invalid_domain")),
        (domain_doc("unknown", domain="intranet"), Filtered("unknown")),
        (domain_doc("indifferent", [0], domain="not a domain"), Filtered("indifferent_without_detections")),
        (domain_doc("indifferent", [3], domain="intranet"), Rejected("invalid_domain")),
        ({"_id": "a.com", "response": None}, Rejected("invalid_response")),
        (domain_doc("malware", [1, 2**31]), Rejected("out_of_range:positives")),
        (domain_doc("malware", ["many"]), Rejected("invalid_number:positives")),
        (domain_doc("malware", lastUpdate=float("nan")), Rejected("invalid_timestamp:lastUpdate")),
        (domain_doc("malware", firstSeen=10**18), Rejected("out_of_range:firstSeen")),
        (domain_doc("x" * 33), Rejected("value_too_long:classification")),
    ],
)
def test_domain_filters_and_rejects(doc, outcome):
    with pytest.raises(type(outcome)) as raised:
        rules.domain_classification(doc, DEFAULT)
    assert raised.value.args == outcome.args


def test_idn_domain_is_stored_in_ascii():
    [(_, row)] = rules.domain_classification(domain_doc("malware", domain="Bücher.Example"), DEFAULT)
    assert row["domain"] == "xn--bcher-kva.example"


def token_doc(token, kind, response="malware", **value):
    return {"_id": token, "_class": "com.cybereason.sage.model.dataset.tokens.TokenRecord", "response": response,
            "value": {"maliciousType": "c2", "source": "rule-team", "link": "https://t/1", "type": kind, **value}}


def test_ipv4_token_goes_to_tokens_and_ips():
    assert rules.tokens(token_doc("198.51.100.7", "IPv4", "indifferent;SHELL"), DEFAULT) == [
        ("ioc_tokens", {"token": "198.51.100.7", "token_type": "IPV4", "response": "indifferent", "subtype": "SHELL",
                        "malicious_type": "c2", "source": "rule-team", "link": "https://t/1"}),
        ("ioc_ips", {"address": "198.51.100.7", "classification": "INDIFFERENT", "source": "TOKENS",
                     "malicious_type": "c2", "link": "https://t/1"}),
    ]


@pytest.mark.parametrize(
    "response, word, subtype, classification",
    [
        ("malware", "malware", None, "MALWARE"),
        ("whitelist;ANTI_VIRUS", "whitelist", "ANTI_VIRUS", "WHITELIST"),
        ("Malware;MS_OFFICE", "malware", "MS_OFFICE", "MALWARE"),
        (" ransomware ; SCHEDULED_TASK ", "ransomware", "SCHEDULED_TASK", "RANSOMWARE"),
        ("hacktool;", "hacktool", None, "HACKTOOL"),
        ("unwanted", "unwanted", None, "UNWANTED"),
    ],
)
def test_token_response_is_a_word_and_an_optional_subtype(response, word, subtype, classification):
    [(_, token), (_, domain)] = rules.tokens(token_doc("bad.example", "DOMAIN", response), DEFAULT)
    assert (token["response"], token["subtype"], domain["classification"]) == (word, subtype, classification)


@pytest.mark.parametrize(
    "raw, kind, stored, stored_type",
    [
        (".vieweva.com", "DOMAIN", "vieweva.com", "DOMAIN"),
        ("//protection-icloudi.com", "DOMAIN", "protection-icloudi.com", "DOMAIN"),
        ("  Bad.Example \t", "Domain", "bad.example", "DOMAIN"),
        (SHA1.upper(), "SHA1", SHA1, "SHA1"),
        (MD5, "md5", MD5, "MD5"),
        (SHA256, "SHA256", SHA256, "SHA256"),
        (" 0.1.2.3", "ipv4", "0.1.2.3", "IPV4"),
    ],
)
def test_token_values_are_normalised(raw, kind, stored, stored_type):
    rows = rules.tokens(token_doc(raw, kind), DEFAULT)
    assert (rows[0][1]["token"], rows[0][1]["token_type"]) == (stored, stored_type)
    expected_tables = {"DOMAIN": ["ioc_tokens", "ioc_domains"], "IPV4": ["ioc_tokens", "ioc_ips"]}
    assert [t for t, _ in rows] == expected_tables.get(stored_type, ["ioc_tokens"])


def test_domain_token_overlays_domains():
    rows = rules.tokens(token_doc("//Bad.Example", "DOMAIN", "whitelist"), DEFAULT)
    assert rows[1] == ("ioc_domains", {"domain": "bad.example", "classification": "WHITELIST", "source": "TOKENS",
                                       "malicious_type": "c2", "positives": None, "detected_urls": None,
                                       "first_seen": None, "last_seen": None})


@pytest.mark.parametrize(
    "doc, reason",
    [
        (token_doc("x", "URL"), "unknown_token_type"),
        ({**token_doc("1.2.3.4", "IPv4"), "value": {"source": "rule-team"}}, "unknown_token_type"),
        (token_doc("999.1.1.1", "IPv4"), "invalid_token_value:IPV4"),
        (token_doc("0123456789abcdef", "MD5"), "invalid_token_value:MD5"),
        (token_doc("nothex", "SHA1"), "invalid_token_value:SHA1"),
        (token_doc("a" * 40, "SHA256"), "invalid_token_value:SHA256"),
        (token_doc("intranet-c2", "DOMAIN"), "invalid_token_value:DOMAIN"),
        (token_doc("// .", "DOMAIN"), "invalid_token_value:DOMAIN"),
        (token_doc("1.2.3.4", "IPv4", response="foo;SHELL"), "unknown_classification"),
        (token_doc("1.2.3.4", "IPv4", response="sinkhole"), "unknown_classification"),
        (token_doc("1.2.3.4", "IPv4", response=None), "missing_response"),
        (token_doc("1.2.3.4", "IPv4", response=";SHELL"), "unknown_classification"),
        ({"_id": "1.2.3.4", "response": "malware"}, "missing_value"),
        (token_doc("1.2.3.4", "IPv4", maliciousType="m" * 65), "value_too_long:malicious_type"),
        (token_doc("1.2.3.4", "IPv4", response="malware;" + "S" * 65), "value_too_long:subtype"),
    ],
)
def test_token_rejects(doc, reason):
    with pytest.raises(Rejected) as raised:
        rules.tokens(doc, DEFAULT)
    assert raised.value.reason == reason


HEADER = {"_id": "TOKENS", "_class": "com.cybereason.sage.model.dataset.DatasetInfo", "version": "41.0",
          "lastUpdateTimestamp": Int64(1598964282276)}


@pytest.mark.parametrize(
    "doc, header",
    [
        (HEADER, True),
        ({"_id": "TOKENS", "version": "41.0"}, True),  # named by its _id alone
        ({"_id": "dataset", "_class": "com.cybereason.sage.model.dataset.DatasetInfo"}, True),  # by its _class alone
        ({**HEADER, "value": {"note": "no type"}}, True),
        ({**HEADER, "value": {"type": "DOMAIN"}}, False),  # a record's shape: not a header, whatever it says
        ({"_id": "1.2.3.4", "_class": "com.cybereason.sage.model.dataset.tokens.TokenRecord"}, False),
        ({"_id": "tokens"}, False),
        ({"_id": "FILE_EXTENSION_CLASSIFICATION"}, False),  # another collection's header
    ],
)
def test_dataset_header_is_recognised_conservatively(doc, header):
    assert rules.is_dataset_header(doc, "TOKENS") is header


def test_token_dataset_header_is_filtered():
    with pytest.raises(Filtered) as raised:
        rules.tokens(HEADER, DEFAULT)
    assert raised.value.rule == "dataset_header"


def test_extension_row_normalises_the_key():
    doc = {"_id": {"extension": ".EXE"}, "value": {"type": "executable", "description": "d", "sources": ["b", "a"]}}
    assert rules.file_extension_classification(doc, DEFAULT) == [
        ("file_extension_classification",
         {"extension": "exe", "type": "EXECUTABLE", "description": "d", "sources": '["b", "a"]'})
    ]


def test_extension_dataset_header_is_filtered():
    header = {"_id": "FILE_EXTENSION_CLASSIFICATION", "_class": "com.cybereason.sage.model.dataset.DatasetInfo",
              "version": "10.0", "lastUpdateTimestamp": Int64(1598964282276)}
    with pytest.raises(Filtered) as raised:
        rules.file_extension_classification(header, DEFAULT)
    assert raised.value.rule == "dataset_header"


@pytest.mark.parametrize(
    "doc, reason",
    [
        ({"_id": {"extension": "exe"}, "value": "broken"}, "missing_type"),
        ({"_id": "exe", "value": {"type": "EXECUTABLE"}}, "missing_extension"),
        ({"_id": {"extension": "."}, "value": {"type": "EXECUTABLE"}}, "invalid_extension"),
        ({"_id": {"extension": "e" * 65}, "value": {"type": "EXECUTABLE"}}, "value_too_long:extension"),
        ({"_id": {"extension": "exe"}, "value": {"type": "T" * 65}}, "value_too_long:type"),
    ],
)
def test_extension_rejects(doc, reason):
    with pytest.raises(Rejected) as raised:
        rules.file_extension_classification(doc, DEFAULT)
    assert raised.value.reason == reason
