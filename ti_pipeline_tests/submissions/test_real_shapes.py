"""Shapes real submissions carry (Cybex-P API metadata, Windows exports, JS producers, an org that
toggles an indicator) that the submissions code must read as the spec says."""

import hashlib
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA

from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.submissions import crypto, lake
from ti_pipeline.submissions.identity import canonical, identity_hash
from ti_pipeline.submissions.process import SUCCESS, process_submission
from ti_pipeline_tests.defs.test_submissions import ioc_rows, ledger, run_asset
from ti_pipeline_tests.submissions.keyring import archive_key

MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def parse(**record) -> lake.SubmissionMeta:
    return lake.parse_metadata("s1", json.dumps({"orgid": "acme", "typetag": "ioc_csv", **record}).encode())


@pytest.mark.parametrize("bits", [1024, 3072, 4096])
def test_other_rsa_key_sizes_split_the_blob_at_the_key_size(bits: int):
    key = RSA.generate(bits, randfunc=random.Random(f"rsa-{bits}").randbytes)
    blob = crypto.encrypt(b"type,value\n", key.publickey())
    assert len(blob) == bits // 8 + 32 + 11 and crypto.decrypt(blob, key) == b"type,value\n"
    with pytest.raises(crypto.DecryptError, match=f"shorter than the {bits // 8 + 32}-byte header"):
        crypto.decrypt(blob[: bits // 8 + 31], key)


@pytest.mark.parametrize(
    ("timezone", "zone", "utc"),
    [("utc", "UTC", (12, 0)), (" UTC ", "UTC", (12, 0)), ("europe/berlin", "Europe/Berlin", (10, 0)),
     ("  ", "UTC", (12, 0)), ("ASIA/KOLKATA", "Asia/Kolkata", (6, 30))],
)
def test_timezone_as_people_type_it(timezone: str, zone: str, utc: tuple[int, int]):
    """The API module takes the timezone as form text: case and stray blanks do not make it unknown."""
    meta = parse(timezone=timezone, timestamp="2026-07-01T12:00:00")
    assert (meta.timezone, meta.submitted_at) == (zone, datetime(2026, 7, 1, *utc))


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [("1730448000", datetime(2024, 11, 1, 8)), ("1730448000.5", datetime(2024, 11, 1, 8, 0, 0, 500000)),
     (" 2026-11-01T08:30:05Z ", datetime(2026, 11, 1, 8, 30, 5)), ("20261101", datetime(2026, 11, 1))],
)
def test_epoch_seconds_written_as_text(timestamp: str, expected: datetime):
    assert parse(timestamp=timestamp).submitted_at == expected


@pytest.mark.parametrize("timestamp", ["NaN", "1_000", "1e3", "0x10", "-"])
def test_text_that_is_not_a_number_is_still_refused(timestamp: str):
    with pytest.raises(lake.InvalidMetadata, match="timestamp"):
        parse(timestamp=timestamp)


def run(payload: bytes, typetag: str):
    meta = lake.SubmissionMeta("s1", "n", "acme", "UTC", typetag, datetime(2026, 11, 1))
    return process_submission(meta, crypto.encrypt(payload, archive_key().publickey()), archive_key(),
                              source="lake/blobs/s1.bin", find_duplicate=lambda *_: None)


def test_json_exported_with_a_byte_order_mark():
    event = {"Event": {"info": "x", "Attribute": [{"type": "md5", "value": MD5}]}}
    plain, bom = run(json.dumps(event).encode(), "misp_event"), run(b"\xef\xbb\xbf" + json.dumps(event).encode(), "misp_event")
    assert (bom.state, bom.reason, len(bom.rows)) == (SUCCESS, None, 1)
    assert bom.identity_hash == plain.identity_hash


def test_lone_surrogate_escape_in_a_comment_keeps_the_submission():
    """JSON allows "\\ud83d" (an emoji cut in half by a JS producer): identity and rows must survive it."""
    text = '{"Event": {"info": "cut \\ud83d", "Attribute": [{"type": "md5", "value": "' + MD5 + '"}]}}'
    outcome = run(text.encode(), "misp_event")
    assert (outcome.state, outcome.reason) == (SUCCESS, None)
    data = json.loads(text)
    assert outcome.identity_hash == hashlib.sha256(
        ("rawmisp_event" + canonical(data)).encode("utf-8", "surrogatepass")).hexdigest()
    assert identity_hash("misp_event", data) != identity_hash("misp_event", json.loads(text.replace("d83d", "d83e")))
    [row] = outcome.rows
    assert row["comment"] == "cut \ufffd"
    row["comment"].encode("utf-8")  # storable


def test_resubmitting_an_older_list_after_a_newer_one_wins_again(tmp_path: Path, sqlite_url: str):
    """Block, allow, block again: the third is the same content as the first, but it is the latest."""
    store = LocalStore(tmp_path / "lake")
    key_file = tmp_path / "private.pem"
    crypto.write_private_key(key_file, archive_key().export_key())
    for day, action in [(1, "block"), (2, "allow"), (3, "block")]:
        lake.write_submission(store, org_id="acme", typetag="ioc_csv", payload=f"type,value,action\nmd5,{MD5},{action}\n".encode(),
                              public_key=archive_key().publickey(), when=datetime(2026, 11, day, tzinfo=UTC))
    run_asset(store.uri, key_file, sqlite_url)
    assert [r[2:] for r in ledger(sqlite_url)] == [("SUCCESS", None, False, 1)] * 3
    assert ioc_rows(sqlite_url, "acme") == [("md5", MD5, "BLOCK", None)]


def test_an_immediate_resubmission_is_still_a_duplicate(tmp_path: Path, sqlite_url: str):
    store = LocalStore(tmp_path / "lake")
    key_file = tmp_path / "private.pem"
    crypto.write_private_key(key_file, archive_key().export_key())
    ids = [lake.write_submission(store, org_id="acme", typetag="ioc_csv", payload=payload.encode(),
                                 public_key=archive_key().publickey(), when=datetime(2026, 11, day, tzinfo=UTC)).submission_id
           for day, payload in [(1, f"type,value\nmd5,{MD5}\n"), (2, f"value,type\n {MD5} ,md5\n")]]
    run_asset(store.uri, key_file, sqlite_url)
    assert [r[2:] for r in ledger(sqlite_url)] == [
        ("SUCCESS", None, False, 1), ("SUCCESS", f"duplicate of {ids[0]}: same content, rows not written again", False, 0)]
