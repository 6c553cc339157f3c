import hashlib

import pytest

from ti_pipeline.submissions.identity import MAX_DEPTH, TooDeep, canonical, depth, identity_hash


def test_canonical_sorts_keys_dedupes_and_sorts_lists_strips_strings():
    data = {"b": [" y ", "x", "y", {"k": " v"}], "a": {"z": 1, "c": "  t"}}
    assert canonical(data) == '{"a":{"c":"t","z":1},"b":["x","y",{"k":"v"}]}'


def test_identity_hash_is_sha256_of_raw_typetag_canonical():
    expected = hashlib.sha256(b'rawioc_csv{"rows":["a","b"]}').hexdigest()
    assert identity_hash("ioc_csv", {"rows": ["b", " a", "a"]}) == expected


def test_same_content_in_another_order_has_the_same_identity_and_typetag_matters():
    one = {"Event": {"info": "x", "Attribute": [{"type": "md5", "value": "a"}, {"type": "sha1", "value": "b"}]}}
    two = {"Event": {"Attribute": [{"value": "b ", "type": "sha1"}, {"value": "a", "type": "md5"}], "info": " x"}}
    assert identity_hash("misp_event", one) == identity_hash("misp_event", two)
    assert identity_hash("misp_event", one) != identity_hash("stix2_bundle", one)


def test_depth_is_bounded_without_recursion():
    assert depth({"a": [1, {"b": []}]}) == 4
    assert depth("text") == 0
    deep: object = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(TooDeep, match=f"deeper than {MAX_DEPTH} levels"):
        canonical(deep)
