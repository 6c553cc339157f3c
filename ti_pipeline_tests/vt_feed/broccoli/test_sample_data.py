import orjson

from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.sample_data.broccoli import sample_vt_sha1s, write_broccoli_objects
from ti_pipeline.sample_data.vt import file_hashes
from ti_pipeline.vt_feed.broccoli.client import parse_report
from ti_pipeline.vt_feed.broccoli.labels import map_label


def test_objects_for_most_sample_sha1s_with_quirks(tmp_path):
    sha1s = sample_vt_sha1s(400)
    assert sha1s[7] == file_hashes(7)[1]
    store = LocalStore(tmp_path / "broccoli")

    written = write_broccoli_objects(store, sha1s + ["not-a-sha1", "A" * 40], seed=0)

    assert set(written) <= set(sha1s)
    assert 0.75 * len(sha1s) < len(written) < 0.95 * len(sha1s)
    outcomes = [parse_report(store.read_bytes(name)) for name in written]
    assert sorted(reason for _, reason in outcomes if reason) == ["malformed_json", "missing_classification"]
    labels = {label for label, reason in outcomes if not reason}
    assert {"malware", "pua", "coinminer", "whitelist", "indifferent", "clean", "unknown"} <= labels
    assert [label for label in labels if not map_label(label)[1]] == ["coinminer"]
    # Verdicts the default import policy keeps out of ioc_file_hashes are part of the mix.
    assert {map_label(label)[0] for label in ("whitelist", "indifferent", "clean", "unknown")} == {"WHITELIST", "INDIFFERENT", "UNKNOWN"}
    some = next(name for name, (_, reason) in zip(written, outcomes, strict=True) if not reason)
    assert orjson.loads(store.read_bytes(some))["sha1"] == some


def test_same_seed_same_objects(tmp_path):
    first, second = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    sha1s = sample_vt_sha1s(100)
    assert write_broccoli_objects(first, sha1s, seed=3) == write_broccoli_objects(second, sha1s, seed=3)
    assert all(first.read_bytes(n) == second.read_bytes(n) for n in write_broccoli_objects(first, sha1s, seed=3))
