from datetime import date

import pytest

from ti_pipeline.core import keys


@pytest.mark.parametrize("value, kind, expected", [
    ("A" * 64, "sha256", "a" * 64), ("a" * 63, "sha256", None), ("g" * 40, "sha1", None),
    (" " + "b" * 32 + " ", "md5", "b" * 32), (None, "md5", None), (123, "sha1", None),
])
def test_normalise_hex(value, kind, expected):
    assert keys.normalise_hex(value, kind) == expected


@pytest.mark.parametrize("value, expected", [
    ("Example.COM.", "example.com"), ("bücher.de", "xn--bcher-kva.de"), ("localhost", None),
    ("-bad.com", None), ("a..b", None), ("1.2.3.4", None), ("x" * 64 + ".com", None), ("a b.com", None),
    # IDNA 2008 / UTS 46, not IDNA 2003: the sharp s is kept, not mapped to "ss".
    ("faß.de", "xn--fa-hia.de"), ("xn--fa-hia.de", "xn--fa-hia.de"), ("münchen.DE", "xn--mnchen-3ya.de"),
    # Curated tokens as they really are: a leading "//" or ".", surrounding blanks.
    (" //.Evil.COM. ", "evil.com"), (".bad.example", "bad.example"), ("//cdn.example.net", "cdn.example.net"),
    ("a_b.example.com", "a_b.example.com"), ("evil", None), ("x.123", None), ("http://x.com", None),
])
def test_normalise_domain(value, expected):
    assert keys.normalise_domain(value) == expected


def test_ips():
    assert keys.normalise_ipv4(" 10.0.0.1 ") == "10.0.0.1"
    assert keys.normalise_ipv4("::1") is None
    assert keys.normalise_ip("2001:DB8::0:1") == "2001:db8::1"


@pytest.mark.parametrize("bad", ["..", "a/b", "/x", ".hidden", "a b", "", "x" * 300])
def test_segments_refuse_hostile_names(bad):
    with pytest.raises(keys.InvalidKey):
        keys.segment(bad)


def test_shard_collection_day():
    assert keys.object_name("r01", "cybereason", "file_rep.bson") == "r01/cybereason/file_rep.bson"
    assert keys.day("20201105") == keys.day("2020-11-05") == date(2020, 11, 5)
    for call, arg in ((keys.shard, "r07"), (keys.collection, "users"), (keys.day, "2020-13-01")):
        with pytest.raises(keys.InvalidKey):
            call(arg)
