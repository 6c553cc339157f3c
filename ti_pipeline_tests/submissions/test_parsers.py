import json

import pytest

from ti_pipeline.submissions.parsers import (
    MAX_COMMENT_CHARS,
    PARSERS,
    IocRow,
    MalformedPayload,
    RowFiltered,
    RowRejected,
)

SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
MD5 = "d41d8cd98f00b204e9800998ecf8427e"


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
        "url,http://x,block,\n"
        "domain,ok.example,maybe,\n"
        "domain,ok.example\n"
    )
    assert records("ioc_csv", text) == [
        IocRow("sha256", SHA256, "BLOCK", "x"),
        IocRow("domain", "xn--bcher-kva.example", "ALLOW", None),
        IocRow("ip", "2001:db8::1", "BLOCK", None),
        RowRejected("ip value is a CIDR range, not a single address"),
        RowRejected("invalid sha1 value"),
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


def test_stix2_bundle_indicators():
    bundle = {
        "type": "bundle",
        "objects": [
            {"type": "identity", "name": "x"},
            {"type": "indicator", "name": "h",
             "pattern": f"[file:hashes.'SHA-256' = '{SHA256}' OR file:hashes.MD5 = '{MD5.upper()}']"},
            {"type": "indicator", "pattern": "[domain-name:value = 'Evil.Example']", "description": "d"},
            {"type": "indicator", "pattern": "[ipv4-addr:value = '192.0.2.1']", "indicator_types": ["benign"]},
            {"type": "indicator", "pattern": "[ipv4-addr:value = '192.0.2.0/24']"},
            {"type": "indicator", "pattern": "[domain-name:value = 'a.example' AND ipv4-addr:value = '192.0.2.1']"},
            {"type": "indicator", "pattern": "[url:value = 'http://a.example/']"},
            {"type": "indicator", "pattern": "x", "pattern_type": "sigma"},
            {"type": "indicator", "pattern": "[domain-name:value = 'r.example']", "revoked": True},
            "not an object",
        ],
    }
    assert records("stix2_bundle", json.dumps(bundle)) == [
        RowFiltered("stix_not_indicator"),
        IocRow("sha256", SHA256, "BLOCK", "h"),
        IocRow("md5", MD5, "BLOCK", "h"),
        IocRow("domain", "evil.example", "BLOCK", "d"),
        IocRow("ip", "192.0.2.1", "ALLOW", None),
        RowRejected("ip value is a CIDR range, not a single address"),
        RowRejected("unsupported STIX pattern (only = comparisons joined by OR)"),
        RowRejected("unsupported STIX object path"),
        RowRejected("indicator has no STIX pattern"),
        RowFiltered("stix_revoked"),
        RowRejected("STIX object is not a JSON object"),
    ]


def test_misp_event_attributes_and_objects():
    event = {
        "Event": {
            "info": "incident",
            "Attribute": [
                {"type": "md5", "value": MD5.upper(), "comment": "c"},
                {"type": "ip-dst", "value": "198.51.100.7"},
                {"type": "hostname", "value": "ok.example", "Tag": [{"name": "allowlist"}]},
                {"type": "ip-src", "value": "300.1.1.1"},
                {"type": "url", "value": "http://x"},
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
        RowFiltered("misp_unsupported_type"),
        RowFiltered("misp_deleted"),
        IocRow("sha256", SHA256, "BLOCK", "incident"),
        RowRejected("MISP object without an Attribute list"),
    ]


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
