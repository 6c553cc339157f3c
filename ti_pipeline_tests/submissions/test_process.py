import dataclasses
import functools
import hashlib
import json
from datetime import UTC, datetime

import pytest

from ti_pipeline.submissions import crypto
from ti_pipeline.submissions.lake import SubmissionMeta
from ti_pipeline.submissions.parsers import PARSERS, stix2_records
from ti_pipeline.submissions.process import (
    ERROR,
    NOT_SUPPORTED,
    SUCCESS,
    ledger_entry,
    ledger_id_of,
    process_submission,
    select_pending,
)
from ti_pipeline_tests.submissions.keyring import archive_key, other_key

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
WHEN = datetime(2026, 11, 1, 8, 0)


def meta(typetag: str = "ioc_csv", sid: str = "s1", org: str = "acme") -> SubmissionMeta:
    return SubmissionMeta(sid, "n", org, "UTC", typetag, WHEN)


def no_duplicates(org: str, identity: str, sid: str) -> None:
    return None


def run(payload: bytes, typetag: str = "ioc_csv", key=None, **kw):
    blob = crypto.encrypt(payload, (key or archive_key()).publickey())
    return process_submission(meta(typetag), blob, archive_key(), source="lake/blobs/s1.bin",
                              find_duplicate=kw.pop("find_duplicate", no_duplicates), **kw)


def test_success_rows_accounting_and_quarantine_without_payload():
    payload = f"type,value,action,comment\nmd5,{MD5},block,a\nmd5,{MD5.upper()},allow,b\nsha1,zz,block,secretish\n"
    outcome = run(payload.encode())
    assert (outcome.state, outcome.reason, outcome.skip) == (SUCCESS, None, False)
    assert outcome.rows == [{"org_id": "acme", "ioc_type": "md5", "value": MD5, "action": "ALLOW", "comment": "b",
                             "submission_id": "s1", "submitted_at": WHEN}]
    acc = outcome.accounting
    assert (acc.read, acc.written, dict(acc.filtered), dict(acc.rejected)) == (
        3, 1, {"repeated_in_submission": 1}, {"invalid sha1 value": 1})
    [q] = outcome.quarantine
    assert (q.source, q.reason, q.offset, q.excerpt) == ("lake/blobs/s1.bin", "invalid sha1 value", 2, "")
    entry = ledger_entry(outcome, WHEN)
    assert entry["state"] == SUCCESS and entry["rows_written"] == 1 and entry["skip"] is False
    assert len(entry["identity_hash"]) == 64


def test_stix_bundle_lands_what_a_value_list_expresses_and_sets_aside_the_rest():
    bundle = {"type": "bundle", "objects": [
        {"type": "indicator", "name": "loader",
         "pattern": f"[file:hashes.'SHA-256' = '{SHA256}'] OR [domain-name:value = 'C2.Example']"},
        {"type": "indicator", "pattern": "[domain-name:value = 'a.example' AND ipv4-addr:value = '192.0.2.1']"},
        {"type": "indicator", "pattern": "[url:value = 'http://Drop.Example/Stage2.bin']"},
        {"type": "indicator", "pattern": "[domain-name:value = 'beacon.example'] WITHIN 60 SECONDS"},
        {"type": "indicator", "pattern": "[process:name = 'evil.exe']"},
        {"type": "indicator", "pattern": "[domain-name:value = 'old.example']", "valid_until": "2026-10-31T00:00:00Z"},
        {"type": "indicator", "pattern": "[domain-name:value = 'c2.example'"},
        {"type": "indicator", "pattern": "[ipv6-addr:value = '2001:DB8::7']", "valid_until": "2026-11-30T00:00:00Z"},
        {"type": "malware", "name": "Loader"},
    ]}
    fixed_clock = {"stix2_bundle": dataclasses.replace(
        PARSERS["stix2_bundle"], records=functools.partial(stix2_records, now=datetime(2026, 11, 1, 9, tzinfo=UTC)))}
    outcome = run(json.dumps(bundle).encode(), typetag="stix2_bundle", parsers=fixed_clock)
    assert (outcome.state, outcome.reason) == (SUCCESS, None)
    assert [(r["ioc_type"], r["value"], r["action"], r["comment"]) for r in outcome.rows] == [
        ("sha256", SHA256, "BLOCK", "loader"),
        ("domain", "c2.example", "BLOCK", "loader"),
        ("url", "http://drop.example/Stage2.bin", "BLOCK", None),
        ("ip", "2001:db8::7", "BLOCK", None),
    ]
    acc = outcome.accounting
    assert (acc.read, acc.written, dict(acc.filtered), dict(acc.rejected)) == (
        10, 4, {"stix_expired": 1, "stix_not_indicator": 1}, {
            "unsupported STIX pattern: AND": 1,
            "unsupported STIX pattern: qualifier WITHIN": 1,
            "unsupported STIX pattern: path process:name": 1,
            "STIX pattern syntax error": 1,
        })
    assert [(q.reason, q.offset) for q in outcome.quarantine] == [
        ("unsupported STIX pattern: AND", 2),
        ("unsupported STIX pattern: qualifier WITHIN", 4),
        ("unsupported STIX pattern: path process:name", 5),
        ("STIX pattern syntax error", 7),
    ]


def test_misp_attribute_not_to_ids_is_filtered_and_the_rest_lands():
    event = {"Event": {"info": "i", "Attribute": [
        {"type": "md5", "value": MD5, "to_ids": True},
        {"type": "domain", "value": "cdn.partner.example", "to_ids": False},
        {"type": "url", "value": "http://exfil.example/up", "to_ids": "1"},
        {"type": "ip-dst", "value": "192.0.2.5", "to_ids": "0"},
    ]}}
    outcome = run(json.dumps(event).encode(), typetag="misp_event")
    assert [(r["ioc_type"], r["value"], r["action"]) for r in outcome.rows] == [
        ("md5", MD5, "BLOCK"), ("url", "http://exfil.example/up", "BLOCK")]
    acc = outcome.accounting
    assert (acc.read, acc.written, dict(acc.filtered), dict(acc.rejected)) == (4, 2, {"misp_not_to_ids": 2}, {})


def test_not_supported_names_the_typetag():
    outcome = run(b"<ioc/>", typetag="openioc_xml")
    assert (outcome.state, outcome.skip, outcome.rows) == (NOT_SUPPORTED, True, [])
    assert outcome.reason == "no parser for typetag 'openioc_xml' (supported: ioc_csv, misp_event, stix2_bundle)"
    assert outcome.identity_hash == hashlib.sha256(b'rawopenioc_xml"<ioc/>"').hexdigest()


@pytest.mark.parametrize(
    ("payload", "typetag", "kind", "reason"),
    [
        (b"\xff\xfe not utf-8", "ioc_csv", "payload", "payload is not UTF-8 text"),
        (b'{"Event": [1, "SECRET-MARKER"]}', "misp_event", "payload", "not a MISP event"),
        (b'{"SECRET-MARKER": ', "stix2_bundle", "payload", "payload is not JSON: Expecting value at line 1"),
    ],
)
def test_error_states_with_reasons(payload: bytes, typetag: str, kind: str, reason: str):
    outcome = run(payload, typetag=typetag)
    assert (outcome.state, outcome.error_kind, outcome.skip) == (ERROR, kind, True)
    assert outcome.reason.startswith(reason) and "SECRET-MARKER" not in outcome.reason


def test_wrong_key_tampered_and_oversized_blobs():
    wrong = run(b"type,value\n", key=other_key())
    assert (wrong.state, wrong.error_kind) == (ERROR, "decrypt")
    assert "another key" in wrong.reason
    blob = bytearray(crypto.encrypt(b"type,value\n", archive_key().publickey()))
    blob[-1] ^= 1
    tampered = process_submission(meta(), bytes(blob), archive_key(), source="s", find_duplicate=no_duplicates)
    assert (tampered.state, tampered.reason) == (ERROR, "payload authentication failed (tampered or truncated blob)")
    big = run(b"x" * 100, max_payload_bytes=200)
    assert (big.state, big.error_kind, big.reason) == (ERROR, "too_large", "blob of 388 bytes exceeds the 200-byte cap")


def test_duplicate_is_success_without_rows_and_checks_org_and_identity():
    asked = []

    def earlier(org: str, identity: str, sid: str) -> str:
        asked.append((org, identity, sid))
        return "s0"

    event = {"Event": {"Attribute": [{"type": "md5", "value": MD5}]}}
    outcome = run(json.dumps(event).encode(), typetag="misp_event", find_duplicate=earlier)
    assert (outcome.state, outcome.duplicate_of, outcome.rows, outcome.accounting.read) == (SUCCESS, "s0", [], 0)
    assert outcome.reason == "duplicate of s0: same content, rows not written again"
    assert asked == [("acme", outcome.identity_hash, "s1")]


def test_select_pending_new_forced_requested_and_capped():
    listed = [(3.0, "meta/c.json"), (1.0, "meta/a.json"), (2.0, "meta/b.json"), (4.0, "meta/bad name.json")]
    bad = ledger_id_of("meta/bad name.json")
    assert bad.startswith("badname-") and len(bad) == 48
    ledger = {"a": False, "b": True}
    plain = select_pending(listed, ledger, requested=[], force=False, cap=10)
    assert (plain.to_process, plain.already_in_ledger) == (["meta/c.json", "meta/bad name.json"], 2)
    forced = select_pending(listed, ledger, requested=[], force=True, cap=10)
    assert forced.to_process == ["meta/b.json", "meta/c.json", "meta/bad name.json"]
    named = select_pending(listed, ledger, requested=["a", "zz"], force=True, cap=10)
    assert (named.to_process, named.requested_missing) == (["meta/a.json"], ["zz"])
    capped = select_pending(listed, {}, requested=[], force=False, cap=2)
    assert (capped.to_process, capped.left_for_later) == (["meta/a.json", "meta/b.json"], 2)
