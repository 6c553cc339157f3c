from pathlib import Path

import pytest

from ti_pipeline.core.objectstore import GcsStore, LocalStore, open_store


@pytest.fixture(params=["file", "gs"])
def store(request, tmp_path: Path):
    if request.param == "file":
        return LocalStore(tmp_path / "bucket")
    bucket = request.getfixturevalue("gcs_bucket")
    return open_store(f"gs://{bucket}/root/prefix")


def test_write_list_read_round_trip(store):
    store.write_bytes("a/b/one.bin", b"1" * 10)
    store.write_bytes("a/two.bin", b"22")
    store.write_bytes("c/three.bin", b"333")
    assert sorted((o.name, o.size) for o in store.list("a/")) == [("a/b/one.bin", 10), ("a/two.bin", 2)]
    assert store.read_bytes("a/two.bin") == b"22"
    with store.open_read("c/three.bin") as f:
        assert f.read(2) == b"33"
    assert store.stat("missing.bin") is None


def test_rewrite_changes_generation(store):
    first = store.write_bytes("x.bin", b"old")
    second = store.write_bytes("x.bin", b"new")
    assert second.generation != first.generation
    assert store.stat("x.bin").generation == second.generation


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../../b", "a//b", ""])
def test_hostile_names_are_refused(store, name):
    with pytest.raises(ValueError):
        store.write_bytes(name, b"x")


def test_gcs_uri_names_bucket_and_prefix(gcs_bucket):
    store = open_store(f"gs://{gcs_bucket}/p")
    assert isinstance(store, GcsStore) and store.uri == f"gs://{gcs_bucket}/p"
    store.write_bytes("k", b"v")
    assert [o.name for o in store.list()] == ["k"]
