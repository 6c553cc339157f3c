from datetime import datetime

import pytest
from bson.int64 import Int64

from ti_pipeline.sage import rules
from ti_pipeline.sage.rules import Filtered, Rejected

SHA256 = "a" * 64
SHA1 = "b" * 40
MD5 = "c" * 32


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
            "EngineB": {"detected": False, "version": "1", "update": "x", "result": None},
            "EngineC": {"detected": True, "version": "1", "update": "x", "result": "Emotet"},
        },
    }
    value.update(value_overrides)
    return {"_id": SHA1, "response": "malware.virus.trojan(14.57,14.35);NONE.null", "firstSeen": 1600000000000,
            "lastUpdate": Int64(1601000000000), "value": value}


def test_file_rep_row():
    [(table, row)] = rules.file_rep(file_doc())
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
        ("ransomware.x(1,1);NONE.null", "RANSOMWARE"),
        ("unwanted.adware(3.2,3.0);NONE.null", "UNWANTED"),
    ],
)
def test_file_rep_classification_is_the_leading_word(response, expected):
    doc = file_doc()
    doc["response"] = response
    assert rules.file_rep(doc)[0][1]["classification"] == expected


@pytest.mark.parametrize("number", [2, Int64(2), 2.0])
def test_numbers_of_any_bson_type(number):
    row = rules.file_rep(file_doc(positives=number, total=number))[0][1]
    assert row["positives"] == 2 and row["total"] == 2 and type(row["positives"]) is int


def test_wrongly_typed_optional_fields_become_null():
    row = rules.file_rep(file_doc(positives="2", sha1="nothex", scan_date=17, scans="x"))[0][1]
    assert (row["positives"], row["sha1"], row["scan_date"], row["detection_names"]) == (None, None, None, None)


def test_upper_case_hash_is_normalised():
    assert rules.file_rep(file_doc(sha256=SHA256.upper()))[0][1]["sha256"] == bytes.fromhex(SHA256)


@pytest.mark.parametrize(
    "doc, outcome",
    [
        (file_doc(response_code=0), Filtered("response_code_not_1")),
        (file_doc(response_code=Int64(-2)), Filtered("response_code_not_1")),
        (file_doc(response_code="1"), Rejected("invalid_response_code")),
        (file_doc(sha256=None), Rejected("missing_sha256")),
        (file_doc(sha256=12), Rejected("invalid_sha256")),
        (file_doc(sha256="zz" + SHA256[2:]), Rejected("invalid_sha256")),
        (file_doc(sha256=SHA256[:-1]), Rejected("invalid_sha256")),
        ({**file_doc(), "value": "x"}, Rejected("missing_value")),
        ({**file_doc(), "response": 42}, Rejected("missing_response")),
        ({**file_doc(), "response": "whatever(1,1)"}, Rejected("unmapped_classification")),
    ],
)
def test_file_rep_filters_and_rejects(doc, outcome):
    with pytest.raises(type(outcome)) as raised:
        rules.file_rep(doc)
    assert raised.value.args == outcome.args


def test_file_rep_missing_sha256():
    doc = file_doc()
    del doc["value"]["sha256"]
    with pytest.raises(Rejected, match="missing_sha256"):
        rules.file_rep(doc)


def domain_doc(kind, positives=(), domain="Evil.Example.COM"):
    return {
        "_id": domain,
        "response": f"maliciousClassification={kind}",
        "value": {"detectedUrls": [{"url": "http://x/", "positives": p, "total": 70} for p in positives]},
    }


@pytest.mark.parametrize(
    "kind, positives, classification, best",
    [
        ("malware", [1, 5.0, Int64(3)], "MALWARE", 5),
        ("whitelist", [], "WHITELIST", None),
        ("phishing", [0], "PHISHING", 0),
        ("indifferent", [0, 2], "AV_DETECTED", 2),
    ],
)
def test_domain_kept(kind, positives, classification, best):
    [(table, row)] = rules.domain_classification(domain_doc(kind, positives))
    assert table == "ioc_domains"
    assert (row["domain"], row["classification"], row["positives"], row["detected_urls"]) == (
        "evil.example.com", classification, best, len(positives))


@pytest.mark.parametrize(
    "doc, outcome",
    [
        (domain_doc("unknown", [9]), Filtered("unknown")),
        (domain_doc("indifferent", [0, 0]), Filtered("indifferent_without_detections")),
        (domain_doc("indifferent", []), Filtered("indifferent_without_detections")),
        (domain_doc("malware", domain="not a domain"), Rejected("invalid_domain")),
        (domain_doc("malware", domain=12), Rejected("invalid_domain")),
        ({"_id": "a.com", "response": None}, Rejected("invalid_response")),
    ],
)
def test_domain_filters_and_rejects(doc, outcome):
    with pytest.raises(type(outcome)) as raised:
        rules.domain_classification(doc)
    assert raised.value.args == outcome.args


def test_idn_domain_is_stored_in_ascii():
    [(_, row)] = rules.domain_classification(domain_doc("malware", domain="Bücher.Example"))
    assert row["domain"] == "xn--bcher-kva.example"


def token_doc(token, kind, response="malware"):
    return {"_id": token, "response": response,
            "value": {"maliciousType": "c2", "source": "rule-team", "link": "https://t/1", "type": kind}}


def test_ipv4_token_goes_to_tokens_and_ips():
    assert rules.tokens(token_doc("198.51.100.7", "IPv4")) == [
        ("ioc_tokens", {"token": "198.51.100.7", "token_type": "IPV4", "response": "malware",
                        "malicious_type": "c2", "source": "rule-team", "link": "https://t/1"}),
        ("ioc_ips", {"address": "198.51.100.7", "classification": "MALWARE", "source": "TOKENS",
                     "malicious_type": "c2", "link": "https://t/1"}),
    ]


def test_domain_token_overlays_domains():
    rows = rules.tokens(token_doc("Bad.Example", "DOMAIN", "whitelist"))
    assert [t for t, _ in rows] == ["ioc_tokens", "ioc_domains"]
    assert rows[1][1]["domain"] == "bad.example"
    assert rows[1][1]["classification"] == "WHITELIST" and rows[1][1]["source"] == "TOKENS"


def test_hash_token_only_in_tokens():
    assert [t for t, _ in rules.tokens(token_doc(SHA1.upper(), "SHA1"))] == ["ioc_tokens"]


@pytest.mark.parametrize(
    "doc, reason",
    [
        (token_doc("x", "URL"), "unknown_token_type"),
        (token_doc("999.1.1.1", "IPv4"), "invalid_token_value"),
        (token_doc("nothex", "MD5"), "invalid_token_value"),
        (token_doc("1.2.3.4", "IPv4", response="sinkhole"), "invalid_response"),
        ({"_id": "1.2.3.4", "response": "malware"}, "missing_value"),
    ],
)
def test_token_rejects(doc, reason):
    with pytest.raises(Rejected, match=reason):
        rules.tokens(doc)


def test_extension_row_normalises_the_key():
    doc = {"_id": {"extension": ".EXE"}, "value": {"type": "executable", "description": "d", "sources": ["b", "a"]}}
    assert rules.file_extension_classification(doc) == [
        ("file_extension_classification",
         {"extension": "exe", "type": "EXECUTABLE", "description": "d", "sources": '["b", "a"]'})
    ]


def test_extension_without_type_is_rejected():
    with pytest.raises(Rejected, match="missing_type"):
        rules.file_extension_classification({"_id": {"extension": "exe"}, "value": "broken"})
