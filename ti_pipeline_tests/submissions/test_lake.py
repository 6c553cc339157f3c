import json
from datetime import UTC, datetime

import pytest

from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.submissions import crypto, lake
from ti_pipeline_tests.submissions.keyring import archive_key


def test_write_submission_publishes_blob_and_metadata(tmp_path):
    store = LocalStore(tmp_path)
    when = datetime(2026, 11, 1, 8, 30, 5, 123456, tzinfo=UTC)
    meta = lake.write_submission(
        store, org_id="acme", typetag="ioc_csv", payload=b"type,value\n", public_key=archive_key().publickey(),
        timezone="Europe/Berlin", name="list.csv", when=when,
    )
    assert meta.submission_id.startswith("20261101T083005123456Z-")
    assert sorted(i.name for i in store.list()) == [lake.blob_name(meta.submission_id), lake.meta_name(meta.submission_id)]
    assert crypto.decrypt(store.read_bytes(lake.blob_name(meta.submission_id)), archive_key()) == b"type,value\n"
    record = json.loads(store.read_bytes(lake.meta_name(meta.submission_id)))
    assert record == {"name": "list.csv", "orgid": "acme", "timezone": "Europe/Berlin", "typetag": "ioc_csv",
                      "timestamp": "2026-11-01T08:30:05.123456+00:00", "size": 256 + 32 + 11}
    assert lake.parse_metadata(meta.submission_id, store.read_bytes(lake.meta_name(meta.submission_id))) == meta


@pytest.mark.parametrize("org", ["../etc", "a/b", "", "x" * 65, " acme"])
def test_producer_refuses_unsafe_org_ids(tmp_path, org: str):
    with pytest.raises(lake.InvalidMetadata, match="orgid"):
        lake.write_submission(LocalStore(tmp_path), org_id=org, typetag="ioc_csv", payload=b"",
                              public_key=archive_key().publickey())
    assert list(LocalStore(tmp_path).list()) == []


def test_timestamps_epoch_and_naive_iso_in_the_submission_timezone():
    meta = lake.parse_metadata("s1", json.dumps(
        {"orgid": "o", "typetag": "t", "timezone": "America/New_York", "timestamp": "2026-07-01T12:00:00"}).encode())
    assert meta.submitted_at == datetime(2026, 7, 1, 16, 0)
    meta = lake.parse_metadata("s1", json.dumps({"orgid": "o", "typetag": "t", "timestamp": 0}).encode())
    assert (meta.submitted_at, meta.timezone, meta.name) == (datetime(1970, 1, 1), "UTC", "s1")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"orgid": "o", "typetag": "t", "timestamp": 1, "timezone": "Mars/Base"}', "timezone"),
        (b'{"orgid": "o", "typetag": "T!", "timestamp": 1}', "typetag"),
        (b'{"orgid": "o", "typetag": "t", "timestamp": "yesterday"}', "timestamp"),
        (b'{"orgid": "o", "typetag": "t", "timestamp": true}', "timestamp"),
        (b'{"orgid": "o", "typetag": "t", "timestamp": 1e300}', "timestamp"),
        (b'{"orgid": "o", "typetag": "t", "timestamp": 1, "size": -1}', "size"),
        (b'{"typetag": "t", "timestamp": 1}', "orgid"),
        (b"[" * 60_000, "not JSON"),
        (b" " * (lake.MAX_METADATA_BYTES + 1), "exceeds"),
    ],
)
def test_invalid_metadata_names_the_field(record: bytes, reason: str):
    with pytest.raises(lake.InvalidMetadata, match=reason):
        lake.parse_metadata("s1", record)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("meta/abc-1.json", "abc-1"), ("meta/../x.json", None), ("meta/a/b.json", None), ("blobs/a.bin", None),
     ("meta/.tmp-x.json", None), ("meta/" + "a" * 65 + ".json", None)],
)
def test_submission_id_of(name: str, expected: str | None):
    assert lake.submission_id_of(name) == expected
