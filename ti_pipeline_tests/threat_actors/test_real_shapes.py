"""Shapes the real Malpedia API and the shipped pymispgalaxies snapshot carry (an adversarial audit)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from datetime import datetime
from functools import cache

import pytest
import sqlalchemy as sa

from ti_pipeline.core import schema
from ti_pipeline.sample_data.malpedia_server import LocalMalpediaServer
from ti_pipeline.threat_actors.attack import AttackCatalog, galaxy_clusters_dir
from ti_pipeline.threat_actors.budget import RequestBudget
from ti_pipeline.threat_actors.client import MalpediaClient
from ti_pipeline.threat_actors.records import RecordError, actor_row
from ti_pipeline.threat_actors.sync import sync_malpedia

NOW = datetime(2026, 1, 2, 3, 4, 5)
UNLIMITED = [(1_000_000, 60.0)]


@cache
def catalog() -> AttackCatalog:
    return AttackCatalog.from_galaxy()


def call(server: LocalMalpediaServer, coro_fn, **client_args):
    async def run():
        async with MalpediaClient(server.base_url, budget=RequestBudget(UNLIMITED), backoff_base=0.01, **client_args) as api:
            return await coro_fn(api), api

    return asyncio.run(run())


# --- actor meta: null, blank, duplicate and reordered values -------------------------------------


def test_blank_or_null_meta_fields_are_the_same_content_as_absent_ones():
    """Prophet Spider's real galaxy entry has ``"country": ""``; a blank, null or empty field is no field."""
    bare = actor_row("x", {"value": "X", "meta": {}}, NOW)
    blank = actor_row(
        "x",
        {"value": "X", "meta": {"country": "", "synonyms": "  ", "refs": [" ", None, ""], "cfr-type-of-incident": None,
                                "targeted-sector": []}},
        NOW,
    )
    assert (blank["country"], blank["synonyms"], blank["refs"], blank["meta"]) == (None, "[]", "[]", "{}")
    assert blank["content_hash"] == bare["content_hash"]


def test_blank_value_is_malformed_and_blank_description_is_none():
    with pytest.raises(RecordError, match="missing value"):
        actor_row("x", {"value": "   "}, NOW)
    assert actor_row("x", {"value": "X", "description": "  \n"}, NOW)["description"] is None
    assert (actor_row("x", {"value": "X", "description": " "}, NOW)["content_hash"]
            == actor_row("x", {"value": "X"}, NOW)["content_hash"])


def test_country_list_with_duplicates_or_another_order_gives_one_row():
    """Equal content hashes must mean equal rows, or a fresh warehouse and an incremental one differ."""
    rows = [actor_row("x", {"value": "X", "meta": {"country": c}}, NOW) for c in (["HK", "CN", "CN"], ["CN", "HK"])]
    assert [r["country"] for r in rows] == ["CN,HK", "CN,HK"]
    assert rows[0]["content_hash"] == rows[1]["content_hash"] and rows[0]["meta"] == rows[1]["meta"]


# --- ATT&CK: groups ATT&CK revoked in favour of another ------------------------------------------


def real_actor(name: str) -> dict:
    with (galaxy_clusters_dir() / "threat-actor.json").open(encoding="utf-8") as f:
        return next(a for a in json.load(f)["values"] if a["value"] == name)


@pytest.mark.parametrize(
    ("actor", "expected"),
    [
        ("Charming Kitten", ("G0059", "external_id", 1.0)),  # refs attack.mitre.org/groups/G0058, revoked by G0059
        ("Kimsuky", ("G0094", "external_id", 1.0)),  # refs G0086 (Stolen Pencil), revoked by G0094
    ],
)
def test_a_ref_to_a_revoked_group_leads_to_its_replacement(actor, expected):
    a = real_actor(actor)
    meta = a.get("meta", {})
    match = catalog().match(a["value"], meta.get("synonyms", []), meta.get("refs", []), [r["dest-uuid"] for r in a.get("related", [])])
    assert (match.group.group_id, match.method, match.confidence) == expected


def test_a_relation_to_a_revoked_group_leads_to_its_replacement():
    """QUILTED TIGER and OilRig relate to MONSOON (G0042) and APT34 (G0057), revoked by G0040 and G0049."""
    with (galaxy_clusters_dir() / "mitre-intrusion-set.json").open(encoding="utf-8") as f:
        uuids = {s["meta"]["external_id"]: s["uuid"] for s in json.load(f)["values"]}
    got = [catalog().match("Nameless", [], [], [uuids[g]]) for g in ("G0042", "G0057")]
    assert [(m.group.group_id, m.method, m.confidence) for m in got] == [
        ("G0040", "galaxy_relation", 0.95), ("G0049", "galaxy_relation", 0.95)]


# --- the client: Retry-After forms, the token as configured -------------------------------------


def test_a_retry_after_equal_to_the_limit_is_waited_out(malpedia_server, snapshot):
    malpedia_server.fail("/api/get/version", status=429, times=1, retry_after="1")
    version, api = call(malpedia_server, lambda api: api.get_version(), max_retry_wait=1.0)
    assert version["version"] == snapshot.version
    assert malpedia_server.requests == ["/api/get/version"] * 2 and api.stats.retries == 1


@pytest.mark.parametrize("form", ["http-date", "absent"])
def test_429_retry_after_as_http_date_or_absent(malpedia_server, snapshot, form):
    retry_after = email.utils.formatdate(time.time() + 3, usegmt=True) if form == "http-date" else None
    malpedia_server.fail("/api/get/version", status=429, times=1, retry_after=retry_after)
    version, api = call(malpedia_server, lambda api: api.get_version())
    assert version["version"] == snapshot.version and api.stats.retries == 1
    assert (api.stats.retry_wait >= 1.5) == (form == "http-date")


@pytest.mark.parametrize("token", ["s3cr3t\n", " s3cr3t "])
def test_a_token_with_surrounding_whitespace_is_sent_trimmed(snapshot, token):
    """A token read from a secret file or env var often ends in a newline."""
    with LocalMalpediaServer(snapshot, token="s3cr3t") as server:
        version, api = call(server, lambda api: api.get_version(), token=token)
    assert version["version"] == snapshot.version and "s3cr3t" not in repr(api)


# --- the sync: actor ids that must be quoted in the URL -----------------------------------------


def test_actor_ids_with_spaces_unicode_and_slashes_are_synced(malpedia_server, snapshot, warehouse):
    odd = {"sath-ı müdafaa": "Sath-ı Müdafaa", "apt c/23": "APT-C-23", "a+b%2F?#": "Plus"}
    for key, name in odd.items():
        snapshot.actors[key] = {"value": name, "meta": {"synonyms": [name]}, "families": []}

    async def run():
        async with MalpediaClient(malpedia_server.base_url, budget=RequestBudget(UNLIMITED), backoff_base=0.01) as api:
            return await sync_malpedia(api, warehouse, concurrency=8, now=NOW)

    report = asyncio.run(run())
    assert (len(report.actors.changes.new), report.errors) == (len(snapshot.actors), 0)
    t = schema.threat_actors
    with warehouse.engine.connect() as conn:
        names = dict(conn.execute(sa.select(t.c.actor_id, t.c.name).where(t.c.actor_id.in_(list(odd)))).all())
    assert names == odd
