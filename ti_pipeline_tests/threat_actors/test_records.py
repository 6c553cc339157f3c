"""Content hashing over content fields only, rows, and change detection."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from ti_pipeline.threat_actors.records import (
    RecordError,
    StoredState,
    actor_row,
    canonical_json,
    content_hash,
    detect_changes,
    family_row,
)

NOW = datetime(2026, 1, 2, 3, 4, 5)
ACTOR = {
    "value": "Sofacy",
    "description": "A group.",
    "uuid": "5b4ee3ea-eee3-4c8e-8323-85ae32658754",
    "meta": {"country": "RU", "refs": ["https://b", "https://a"], "synonyms": ["APT28", "Fancy Bear"]},
    "families": {"win.xagent": {"common_name": "X-Agent", "updated": "2024-01-01"}},
}


def test_canonical_json_sorts_keys_and_scalar_lists_and_strips_strings():
    assert canonical_json({"b": [" y", "x", "x"], "a": 1}) == '{"a":1,"b":["x","y"]}'


def test_actor_hash_ignores_order_whitespace_string_vs_list_and_family_timestamps():
    same = json.loads(json.dumps(ACTOR))
    same["meta"] = {"synonyms": ["Fancy Bear", "APT28 "], "refs": ["https://a", "https://b"], "country": ["RU"]}
    same["families"]["win.xagent"]["updated"] = "2025-06-30"
    assert actor_row("apt28", same, NOW)["content_hash"] == actor_row("apt28", ACTOR, NOW)["content_hash"]


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.update(description="Another group."),
        lambda a: a["meta"]["synonyms"].append("Sednit"),
        lambda a: a["meta"].update({"cfr-type-of-incident": "Espionage"}),
        lambda a: a.update(families={}),
        lambda a: a.update(value="APT 28"),
    ],
)
def test_actor_hash_changes_with_content(change):
    changed = json.loads(json.dumps(ACTOR))
    change(changed)
    assert actor_row("apt28", changed, NOW)["content_hash"] != actor_row("apt28", ACTOR, NOW)["content_hash"]


def test_actor_row_takes_meta_fields_given_as_string_or_list():
    as_string = actor_row("a", {**ACTOR, "meta": {"country": "CN", "synonyms": "Only One"}}, NOW)
    as_list = actor_row("b", {**ACTOR, "meta": {"country": ["CN", "HK"], "synonyms": ["One", "Two"]}}, NOW)
    assert (as_string["country"], json.loads(as_string["synonyms"])) == ("CN", ["Only One"])
    assert (as_list["country"], json.loads(as_list["synonyms"])) == ("CN,HK", ["One", "Two"])
    assert json.loads(as_string["meta"]) == {"country": ["CN"], "synonyms": ["Only One"]}
    assert as_string["families"] == '["win.xagent"]' and as_string["created_at"] == as_string["last_updated"] == NOW


@pytest.mark.parametrize(
    ("actor", "reason"),
    [
        ({"description": "no name"}, "missing value"),
        ({"value": 42}, "value is a int, not a string"),
        ({"value": "X", "meta": ["not", "an", "object"]}, "meta is a list, not an object"),
        ([1, 2], "actor is a list, not an object"),
    ],
)
def test_unusable_actors_say_why(actor, reason):
    with pytest.raises(RecordError, match=reason):
        actor_row("x", actor, NOW)


def test_family_hash_leaves_out_updated():
    family = {"common_name": "Emotet", "alt_names": ["Geodo"], "attribution": [], "urls": ["u"], "updated": "2024-01-01"}
    later = {**family, "updated": "2025-01-01"}
    assert family_row("win.emotet", later, NOW)["content_hash"] == family_row("win.emotet", family, NOW)["content_hash"]
    assert family_row("win.emotet", later, NOW)["updated"] == "2025-01-01"
    assert family_row("win.emotet", {**family, "library_entries": [1]}, NOW)["content_hash"] == (
        family_row("win.emotet", family, NOW)["content_hash"]
    )  # only the fields the row stores are content
    renamed = {**family, "alt_names": ["Geodo", "Heodo"]}
    assert family_row("win.emotet", renamed, NOW)["content_hash"] != family_row("win.emotet", family, NOW)["content_hash"]


def test_content_hash_is_sha256_hex():
    assert content_hash({}) == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_detect_changes():
    stored = {
        "same": StoredState("h1", False),
        "edited": StoredState("h2", False),
        "gone": StoredState("h3", False),
        "gone_before": StoredState("h4", True),
        "back": StoredState("h5", True),
        "failed_fetch": StoredState("h6", False),
    }
    current = {"same": "h1", "edited": "h2b", "back": "h5", "fresh": "h7"}
    listed = [*current, "failed_fetch"]
    changes = detect_changes(stored, current, listed)
    assert changes.new == ["fresh"]
    assert changes.updated == ["back", "edited"]
    assert changes.restored == ["back"]
    assert changes.unchanged == ["same"]
    assert changes.removed == ["gone"]  # a failed fetch is not a removal; a removed one is not removed twice
