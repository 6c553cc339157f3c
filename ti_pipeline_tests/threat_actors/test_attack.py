"""Matching actors to ATT&CK groups from the shipped galaxy data."""

from __future__ import annotations

import json
from functools import cache

import pytest

from ti_pipeline.threat_actors.attack import AttackCatalog, galaxy_clusters_dir, name_key, technique_rows


@cache
def catalog() -> AttackCatalog:
    return AttackCatalog.from_galaxy()


def test_catalog_holds_groups_and_their_techniques():
    cat = catalog()
    apt28 = cat.groups["G0007"]
    assert apt28.name == "APT28"
    assert len(apt28.techniques) > 50
    ids = {t.technique_id for t in apt28.techniques}
    assert "T1566.001" in ids  # spearphishing attachment
    phishing = next(t for t in apt28.techniques if t.technique_id == "T1566.001")
    assert phishing.name == "Spearphishing Attachment" and phishing.tactic == "initial-access"
    assert cat.version.startswith("intrusion-set-")


@pytest.mark.parametrize(
    ("name", "synonyms", "refs", "related", "expected"),
    [
        ("Whoever", [], ["https://attack.mitre.org/groups/G0007/"], [], ("G0007", "external_id", 1.0)),
        ("APT 28", [], [], [], ("G0007", "name", 0.9)),
        ("Some Local Name", ["Fancy Bear"], [], [], ("G0007", "synonym", 0.75)),
        ("Nobody", ["Nothing Known"], ["https://example.com"], [], None),
    ],
)
def test_match_methods(name, synonyms, refs, related, expected):
    match = catalog().match(name, synonyms, refs, related)
    got = None if match is None else (match.group.group_id, match.method, match.confidence)
    assert got == expected


def test_galaxy_relation_by_uuid():
    uuid = catalog().groups["G0007"].uuid
    match = catalog().match("Nameless", [], [], [uuid])
    assert (match.group.group_id, match.method, match.confidence) == ("G0007", "galaxy_relation", 0.95)


def test_ambiguous_evidence_lowers_confidence_and_prefers_most_shared_names():
    cat = catalog()
    refs = ["https://attack.mitre.org/groups/G0007", "https://attack.mitre.org/groups/G0016"]
    match = cat.match("APT29", ["Cozy Bear"], refs, [])
    assert (match.group.group_id, match.method, match.confidence) == ("G0016", "external_id", 0.8)


def test_technique_rows_carry_method_confidence_and_group():
    cat = catalog()
    match = cat.match("APT28", [], [], [])
    rows = technique_rows("apt28", match)
    assert len(rows) == len(cat.groups["G0007"].techniques)
    assert {r["match_method"] for r in rows} == {"name"} and {r["confidence"] for r in rows} == {0.9}
    assert {r["attack_group"] for r in rows} == {"APT28 (G0007)"}


def test_real_actors_mapped():
    """The galaxy's 864 actors: how many reach an ATT&CK group with techniques (the seed reached 171)."""
    with (galaxy_clusters_dir() / "threat-actor.json").open() as f:
        actors = json.load(f)["values"]
    cat = catalog()
    mapped = [
        m
        for a in actors
        if (m := cat.match(a["value"], a.get("meta", {}).get("synonyms", []), a.get("meta", {}).get("refs", []),
                           [r["dest-uuid"] for r in a.get("related", [])]))
        and m.group.techniques
    ]
    assert len(actors) == 864
    assert len(mapped) == 174


def test_name_key_ignores_case_and_punctuation():
    assert name_key("APT 28") == name_key("apt-28") == "apt28"
