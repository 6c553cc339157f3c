import json
from datetime import UTC, datetime

import pytest

from ti_pipeline.submissions.parsers import (
    MAX_COMMENT_CHARS,
    MAX_VALUE_CHARS,
    PARSERS,
    IocRow,
    MalformedPayload,
    RowFiltered,
    RowRejected,
    normalise_value,
    stix2_records,
)

SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
MD5 = "d41d8cd98f00b204e9800998ecf8427e"
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def records(typetag: str, text: str) -> list:
    parser = PARSERS[typetag]
    return list(parser.records(parser.load(text)))


def test_ioc_csv_normalises_and_rejects_row_by_row():
    text = (
        "\ufeffType, Value ,Action,Comment\n"
        f"sha256,{SHA256.upper()},BLOCK,x\n"
        "hostname,Bücher.Example.,allow,\n"
        "ipv6,2001:DB8:0::1,,\n"
        "\n"
        "ip,10.0.0.0/8,block,\n"
        "sha1,abc,block,\n"
        "url,HTTP://Evil.Example/Drop.exe,block,\n"
        "url,http://x,block,\n"
        "email,a@b.example,block,\n"
        "domain,ok.example,maybe,\n"
        "domain,ok.example\n"
    )
    assert records("ioc_csv", text) == [
        IocRow("sha256", SHA256, "BLOCK", "x"),
        IocRow("domain", "xn--bcher-kva.example", "ALLOW", None),
        IocRow("ip", "2001:db8::1", "BLOCK", None),
        RowRejected("ip value is a CIDR range, not a single address"),
        RowRejected("invalid sha1 value"),
        IocRow("url", "http://evil.example/Drop.exe", "BLOCK", None),
        RowRejected("invalid url value"),
        RowRejected("unknown ioc type"),
        RowRejected("action is neither block nor allow"),
        RowRejected("row has 2 fields, the header has 4"),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no header row"),
        ("value,action\nx,block\n", "must name the columns type and value"),
        ("type,value,type\n", "repeats a column name"),
        ('type,value\nmd5,"' + "a" * 200_000 + '"\n', "malformed CSV at line"),
    ],
)
def test_ioc_csv_unreadable_payloads(text: str, reason: str):
    with pytest.raises(MalformedPayload, match=reason):
        PARSERS["ioc_csv"].load(text)


def test_hostile_values_are_rejected_or_kept_verbatim():
    sql = "x'); DROP TABLE customer_ioc; --"
    text = "type,value,action,comment\n" + "\n".join(
        [
            f"domain,{'a' * 5000}.example,block,",
            f'md5,{MD5},block,"{sql}"',
            f"md5,{MD5},block,{'c' * (MAX_COMMENT_CHARS + 1)}",
            f"domain,{sql},block,",
        ]
    )
    assert records("ioc_csv", text) == [
        RowRejected("domain value longer than 1024 characters"),
        IocRow("md5", MD5, "BLOCK", sql),
        RowRejected(f"comment longer than {MAX_COMMENT_CHARS} characters"),
        RowRejected("invalid domain value"),
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://Evil.Example/Path/A.exe?Q=1#Top", "http://evil.example/Path/A.exe?Q=1#Top"),
        ("  HTTPS://user:Secret@Bücher.Example.:8443/x  ", "https://user:Secret@xn--bcher-kva.example:8443/x"),
        ("http://[2001:DB8:0::1]:8080/a", "http://[2001:db8::1]:8080/a"),
        ("ftp://192.0.2.7", "ftp://192.0.2.7"),
        ("http://a.example/?", "http://a.example/?"),
        ("http://a.example/" + "p" * (MAX_VALUE_CHARS - 17), "http://a.example/" + "p" * (MAX_VALUE_CHARS - 17)),
        ("http://a.example/" + "p" * (MAX_VALUE_CHARS - 16), RowRejected("value_too_long")),
        ("evil.example/path", RowRejected("invalid url value")),
        ("javascript:alert(1)", RowRejected("invalid url value")),
        ("http:///path", RowRejected("invalid url value")),
        ("http://intranet/", RowRejected("invalid url value")),
        ("http://a.example:99999/", RowRejected("invalid url value")),
        ("http://a.example/a b", RowRejected("invalid url value")),
        ("http://[2001:db8::1/", RowRejected("invalid url value")),
    ],
)
def test_url_values_keep_all_but_scheme_and_host_as_written(raw: str, expected: str | RowRejected):
    assert normalise_value("url", raw) == expected


def stix(*indicators: dict, now: datetime = NOW) -> list:
    """Records of a bundle of these indicators (each a pattern, or a dict of fields) at a fixed time."""
    objects = [{"type": "indicator", "pattern": i} if isinstance(i, str) else {"type": "indicator", **i}
               for i in indicators]
    return list(stix2_records(PARSERS["stix2_bundle"].load(json.dumps({"type": "bundle", "objects": objects})), now))


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (f"[file:hashes.MD5 = '{MD5.upper()}']", [("md5", MD5)]),
        (f"[file:hashes.'MD5' = '{MD5}']", [("md5", MD5)]),
        (f"[file:hashes.'SHA-1' = '{SHA1}']", [("sha1", SHA1)]),
        (f"[file:hashes.SHA1 = '{SHA1}']", [("sha1", SHA1)]),
        (f"[file:hashes.'SHA-256' = '{SHA256}']", [("sha256", SHA256)]),
        (f"[file:'hashes'.SHA256 = '{SHA256}']", [("sha256", SHA256)]),
        ("[domain-name:value = 'Evil.Example']", [("domain", "evil.example")]),
        ("[ipv4-addr:value = '192.0.2.1']", [("ip", "192.0.2.1")]),
        ("[ipv6-addr:value = '2001:DB8:0:0::1']", [("ip", "2001:db8::1")]),
        ("[url:value = 'HTTP://Evil.Example/it\\'s']", [("url", "http://evil.example/it's")]),
        (
            f"[file:hashes.'SHA-256' = '{SHA256}' OR file:hashes.MD5 = '{MD5}']",
            [("sha256", SHA256), ("md5", MD5)],
        ),
        (
            f"[file:hashes.'SHA-256' = '{SHA256}'] OR [domain-name:value = 'c2.example']",
            [("sha256", SHA256), ("domain", "c2.example")],
        ),
        (
            "([ipv4-addr:value = '192.0.2.1'] OR ([ipv6-addr:value = '::1' OR (url:value = 'http://a.example/')]))",
            [("ip", "192.0.2.1"), ("ip", "::1"), ("url", "http://a.example/")],
        ),
        ("[domain-name:value IN ('a.example', 'B.example')]", [("domain", "a.example"), ("domain", "b.example")]),
        (  # the specification's own example of a list of URLs
            "[url:value = 'http://example.com/foo' OR url:value = 'http://example.com/bar']",
            [("url", "http://example.com/foo"), ("url", "http://example.com/bar")],
        ),
    ],
)
def test_stix_value_lists_become_rows(pattern: str, expected: list[tuple[str, str]]):
    assert stix({"pattern": pattern, "name": "n"}) == [IocRow(t, v, "BLOCK", "n") for t, v in expected]


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        ("[domain-name:value = 'a.example' AND ipv4-addr:value = '192.0.2.1']", "AND"),
        ("[domain-name:value = 'a.example'] AND [ipv4-addr:value = '192.0.2.1']", "AND"),
        ("[domain-name:value = 'a.example' OR (url:value = 'http://a.example/' AND url:value = 'x')]", "AND"),
        ("[domain-name:value = 'a.example'] FOLLOWEDBY [ipv4-addr:value = '192.0.2.1']", "FOLLOWEDBY"),
        ("[domain-name:value = 'a.example'] WITHIN 300 SECONDS", "qualifier WITHIN"),
        ("[domain-name:value = 'a.example'] REPEATS 5 TIMES", "qualifier REPEATS"),
        ("[domain-name:value = 'a.example'] REPEATS 5 TIMES WITHIN 600 SECONDS", "qualifier WITHIN"),
        ("[domain-name:value = 'a.example' AND domain-name:value = 'b.example'] WITHIN 5 SECONDS", "qualifier WITHIN"),
        (
            "[domain-name:value = 'a.example'] START t'2026-01-01T00:00:00Z' STOP t'2026-02-01T00:00:00Z'",
            "qualifier START/STOP",
        ),
        ("[domain-name:value MATCHES '^evil\\\\.']", "MATCHES"),
        ("[domain-name:value LIKE '%.evil.example']", "LIKE"),
        ("[domain-name:value != 'a.example']", "!="),
        ("[domain-name:value NOT = 'a.example']", "NOT ="),
        ("[domain-name:value NOT IN ('a.example')]", "NOT IN"),
        ("[ipv4-addr:value ISSUBSET '198.51.100.0/24']", "ISSUBSET"),
        ("[ipv4-addr:value ISSUPERSET '198.51.100.7']", "ISSUPERSET"),
        ("[file:size > 1000]", ">"),
        ("[EXISTS domain-name:value]", "EXISTS"),
        ("[process:name = 'evil.exe']", "path process:name"),
        ("[file:name = 'evil.exe' OR file:hashes.MD5 = 'x']", "path file:name"),
        ("[file:hashes.'SHA-512' = 'x']", "path file:hashes.'SHA-512'"),
        ("[file:hashes.'SHA3-256' = 'x']", "path file:hashes.'SHA3-256'"),
        ("[network-traffic:dst_ref.value = '198.51.100.9']", "path network-traffic:dst_ref.value"),
        ("[domain-name:resolves_to_refs[*].value = '192.0.2.1']", "path domain-name:resolves_to_refs[*].value"),
        ("[x-acme-" + "a" * 100 + ":value = 'x']", "path x-acme-" + "a" * 54 + "..."),
        ("[file:hashes.MD5 = h'd41d8cd98f00b204e9800998ecf8427e']", "value that is not a string"),
        ("[domain-name:value IN ('a.example', 7)]", "value that is not a string"),
        ("[domain-name:value IN ()]", "empty IN ()"),
    ],
)
def test_stix_constructs_a_value_list_cannot_express_are_one_rejected_indicator(pattern: str, construct: str):
    assert stix(pattern) == [RowRejected(f"unsupported STIX pattern: {construct}")]


@pytest.mark.parametrize(
    "pattern",
    [
        "domain-name:value = 'a.example'",
        "[domain-name:value = 'a.example'",
        "[domain-name:value = 'a.example'] OR",
        "[domain-name:value = \"a.example\"]",
        "[domain-name:value = 'a.example\\n']",
        "[domain-name:value = 'a.example'] within 5 seconds",
        "[SECRET-MARKER]",
    ],
)
def test_invalid_stix_pattern_is_a_syntax_error_without_quoting_it(pattern: str):
    assert stix(pattern) == [RowRejected("STIX pattern syntax error")]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [  # examples from the STIX 2.1 specification: valid patterns, none of them a list of values
        (
            "[email-message:from_ref.value MATCHES '.+\\\\@example\\\\.com$' AND "
            "email-message:body_multipart[*].body_raw_ref.name MATCHES '^Final Report.+\\\\.exe$']",
            "AND",
        ),
        ("[file:hashes.'SHA-256' = 'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f' AND "
         "file:mime_type = 'application/x-pdf']", "AND"),
        (
            "[file:hashes.'SHA-256' = 'bf07a7fbb825fc0aae7bf4a1177b2b31fcf8a3feeaf7092761e18c859ee52a9c' OR "
            "file:hashes.MD5 = 'cead3f77f6cda6ec00f57d76c9a6879f'] AND "
            "[file:hashes.'SHA-256' = 'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f']",
            "AND",
        ),
        (
            "[file:hashes.MD5 = '79054025255fb1a26e4bc422aef54eb4'] FOLLOWEDBY "
            "[windows-registry-key:key = 'HKEY_LOCAL_MACHINE\\\\foo\\\\bar'] WITHIN 300 SECONDS",
            "FOLLOWEDBY",
        ),
        (
            "[user-account:account_type = 'unix' AND user-account:user_id = '1007' AND "
            "user-account:account_login = 'Peter'] AND [user-account:account_type = 'unix' AND "
            "user-account:user_id = '1008' AND user-account:account_login = 'Paul']",
            "AND",
        ),
        ("[artifact:mime_type = 'application/vnd.tcpdump.pcap' AND artifact:payload_bin MATCHES '\\\\xd4\\\\xc3']",
         "AND"),
        ("[file:name = 'foo.dll' AND file:parent_directory_ref.path = 'C:\\\\Windows\\\\System32']", "AND"),
        ("[file:extensions.'windows-pebinary-ext'.sections[*].entropy > 7.0]", ">"),
        ("[x509-certificate:issuer = 'CN=WEBMAIL' AND x509-certificate:serial_number = '4c:0b:1d:19:74:86']"
         " START t'2016-06-01T00:00:00Z' STOP t'2016-07-01T00:00:00Z'", "qualifier START/STOP"),
        ("[network-traffic:dst_ref.type = 'ipv4-addr' AND network-traffic:dst_ref.value = '203.0.113.33/32']", "AND"),
        ("[domain-name:value = 'www.5z8.info' AND domain-name:resolves_to_refs[*].value = '198.51.100.1/32']", "AND"),
    ],
)
def test_specification_examples_that_are_no_value_list_name_their_construct(pattern: str, reason: str):
    assert stix(pattern) == [RowRejected(f"unsupported STIX pattern: {reason}")]


def test_stix_indicator_expiry_is_a_filter_rule_at_the_given_time():
    pattern = "[domain-name:value = 'a.example']"
    assert stix(
        {"pattern": pattern, "valid_until": "2026-11-02T09:29:59.999Z"},
        {"pattern": pattern, "valid_until": "2026-11-02T09:30:00Z"},
        {"pattern": pattern, "valid_until": "2026-11-02T10:29:00+01:00"},
        {"pattern": pattern, "valid_until": "2026-11-02T09:30:00.001Z"},
        {"pattern": pattern, "valid_until": "2026-11-02T09:31:00"},
        {"pattern": "not a pattern", "valid_until": "2020-01-01T00:00:00Z"},
        {"pattern": pattern, "valid_until": "soon"},
        {"pattern": pattern, "valid_until": None},
    ) == [
        RowFiltered("stix_expired"),
        RowFiltered("stix_expired"),
        RowFiltered("stix_expired"),
        IocRow("domain", "a.example", "BLOCK", None),
        IocRow("domain", "a.example", "BLOCK", None),
        RowFiltered("stix_expired"),
        RowRejected("indicator valid_until is not a timestamp"),
        RowRejected("indicator valid_until is not a timestamp"),
    ]
    assert stix({"pattern": pattern, "valid_until": "2026-11-02T09:30:00Z"}, now=datetime(2026, 1, 1, tzinfo=UTC)) == [
        IocRow("domain", "a.example", "BLOCK", None)]


def test_stix2_bundle_rest_lands_around_what_is_set_aside():
    bundle = {
        "type": "bundle",
        "objects": [
            {"type": "identity", "name": "x"},
            {"type": "indicator", "name": "h",
             "pattern": f"[file:hashes.'SHA-256' = '{SHA256}'] OR [file:hashes.MD5 = '{MD5.upper()}']"},
            {"type": "indicator", "pattern": "[domain-name:value = 'Evil.Example']", "description": "d"},
            {"type": "indicator", "pattern": "[ipv4-addr:value = '192.0.2.1']", "indicator_types": ["benign"]},
            {"type": "indicator", "pattern": "[ipv4-addr:value = '192.0.2.0/24' OR ipv4-addr:value = '192.0.2.9']"},
            {"type": "indicator", "pattern": "[domain-name:value = 'a.example' AND ipv4-addr:value = '192.0.2.1']"},
            {"type": "indicator", "pattern": "[domain-name:value = 'w.example'] WITHIN 60 SECONDS"},
            {"type": "indicator", "pattern": "[url:value = 'http://a.example/" + "p" * 300 + "']"},
            {"type": "indicator", "pattern": "[url:value = 'http://Old.Example/']", "valid_until": "2026-01-01T00:00:00Z"},
            {"type": "indicator", "pattern": "[domain-name:value = 'a.example'"},
            {"type": "indicator", "pattern": "x", "pattern_type": "sigma"},
            {"type": "indicator", "pattern": "[domain-name:value = 'r.example']", "revoked": True},
            {"type": "indicator", "pattern": "(" * 2000 + "[domain-name:value = 'd.example']" + ")" * 2000},
            {"type": "indicator", "pattern": "[url:value = 'https://Last.Example/A']"},
            "not an object",
        ],
    }
    assert list(stix2_records(PARSERS["stix2_bundle"].load(json.dumps(bundle)), NOW)) == [
        RowFiltered("stix_not_indicator"),
        IocRow("sha256", SHA256, "BLOCK", "h"),
        IocRow("md5", MD5, "BLOCK", "h"),
        IocRow("domain", "evil.example", "BLOCK", "d"),
        IocRow("ip", "192.0.2.1", "ALLOW", None),
        RowRejected("ip value is a CIDR range, not a single address"),
        IocRow("ip", "192.0.2.9", "BLOCK", None),
        RowRejected("unsupported STIX pattern: AND"),
        RowRejected("unsupported STIX pattern: qualifier WITHIN"),
        RowRejected("value_too_long"),
        RowFiltered("stix_expired"),
        RowRejected("STIX pattern syntax error"),
        RowRejected("indicator has no STIX pattern"),
        RowFiltered("stix_revoked"),
        RowRejected("STIX pattern nests too deeply"),
        IocRow("url", "https://last.example/A", "BLOCK", None),
        RowRejected("STIX object is not a JSON object"),
    ]


def test_stix_pattern_of_thousands_of_ored_hashes():
    hashes = [f"{i:032x}" for i in range(2000)]
    within = "[" + " OR ".join(f"file:hashes.MD5 = '{h}'" for h in hashes) + "]"
    across = " OR ".join(f"[file:hashes.MD5 = '{h}']" for h in hashes)
    assert stix(within, across) == [IocRow("md5", h, "BLOCK", None) for h in hashes] * 2


def test_stix_clock_defaults_to_now():
    bundle = {"type": "bundle", "objects": [
        {"type": "indicator", "pattern": "[domain-name:value = 'a.example']", "valid_until": "2020-01-01T00:00:00Z"},
        {"type": "indicator", "pattern": "[domain-name:value = 'b.example']", "valid_until": "9999-12-31T23:59:59Z"},
    ]}
    assert list(PARSERS["stix2_bundle"].records(bundle)) == [
        RowFiltered("stix_expired"), IocRow("domain", "b.example", "BLOCK", None)]


def test_misp_event_attributes_and_objects():
    event = {
        "Event": {
            "info": "incident",
            "Attribute": [
                {"type": "md5", "value": MD5.upper(), "comment": "c"},
                {"type": "ip-dst", "value": "198.51.100.7"},
                {"type": "hostname", "value": "ok.example", "Tag": [{"name": "allowlist"}]},
                {"type": "ip-src", "value": "300.1.1.1"},
                {"type": "url", "value": "HTTP://Exfil.Example/Upload"},
                {"type": "url", "value": "http://x"},
                {"type": "email-src", "value": "a@b.example"},
                {"type": "domain", "value": "gone.example", "deleted": True},
            ],
            "Object": [{"Attribute": [{"type": "sha256", "value": SHA256}]}, {"name": "no attributes"}],
        }
    }
    assert records("misp_event", json.dumps(event)) == [
        IocRow("md5", MD5, "BLOCK", "c"),
        IocRow("ip", "198.51.100.7", "BLOCK", "incident"),
        IocRow("domain", "ok.example", "ALLOW", "incident"),
        RowRejected("invalid ip value"),
        IocRow("url", "http://exfil.example/Upload", "BLOCK", "incident"),
        RowRejected("invalid url value"),
        RowFiltered("misp_unsupported_type"),
        RowFiltered("misp_deleted"),
        IocRow("sha256", SHA256, "BLOCK", "incident"),
        RowRejected("MISP object without an Attribute list"),
    ]


@pytest.mark.parametrize(
    ("to_ids", "expected"),
    [
        (False, RowFiltered("misp_not_to_ids")),
        (0, RowFiltered("misp_not_to_ids")),
        ("0", RowFiltered("misp_not_to_ids")),
        ("false", RowFiltered("misp_not_to_ids")),
        (" False ", RowFiltered("misp_not_to_ids")),
        (True, IocRow("domain", "c2.example", "BLOCK", None)),
        (1, IocRow("domain", "c2.example", "BLOCK", None)),
        ("1", IocRow("domain", "c2.example", "BLOCK", None)),
        ("true", IocRow("domain", "c2.example", "BLOCK", None)),
        (None, RowRejected("MISP to_ids is neither true nor false")),
        (2, RowRejected("MISP to_ids is neither true nor false")),
        ("yes", RowRejected("MISP to_ids is neither true nor false")),
        ([], RowRejected("MISP to_ids is neither true nor false")),
    ],
)
def test_misp_attributes_not_meant_for_detection_are_not_blocked(to_ids: object, expected: object):
    event = {"Event": {"Attribute": [{"type": "domain", "value": "c2.example", "to_ids": to_ids}]}}
    assert records("misp_event", json.dumps(event)) == [expected]


def test_misp_to_ids_absent_blocks_and_false_still_allows_what_is_allowlisted():
    event = {
        "Event": {
            "info": "i",
            "Attribute": [
                {"type": "domain", "value": "c2.example"},
                {"type": "domain", "value": "ok.example", "to_ids": False, "Tag": [{"name": "allowlist"}]},
                {"type": "ip-dst", "value": "192.0.2.1", "to_ids": False},
                {"type": "md5", "value": MD5, "to_ids": True},
            ],
        }
    }
    assert records("misp_event", json.dumps(event)) == [
        IocRow("domain", "c2.example", "BLOCK", "i"),
        IocRow("domain", "ok.example", "ALLOW", "i"),
        RowFiltered("misp_not_to_ids"),
        IocRow("md5", MD5, "BLOCK", "i"),
    ]
    event["Event"]["Tag"] = [{"name": "allowlist"}]
    assert records("misp_event", json.dumps(event))[2] == IocRow("ip", "192.0.2.1", "ALLOW", "i")


@pytest.mark.parametrize(
    ("typetag", "text", "reason"),
    [
        ("misp_event", "[1, 2]", "not a MISP event"),
        ("misp_event", '{"Event": {"Attribute": {}}}', "must be lists"),
        ("stix2_bundle", '{"type": "indicator"}', "not a STIX 2 bundle"),
        ("stix2_bundle", '{"type": "bundle", "objects": [', "payload is not JSON: Expecting value at line 1"),
        ("stix2_bundle", "[" * 100_000 + "]" * 100_000, "nests deeper than 32 levels"),
        ("misp_event", '{"Event": ' * 40 + "1" + "}" * 40, "nests deeper than 32 levels"),
    ],
)
def test_unreadable_json_payloads(typetag: str, text: str, reason: str):
    with pytest.raises(MalformedPayload, match=reason):
        PARSERS[typetag].load(text)
