"""The incremental sync and the enrichment against the loopback server, on SQLite and MariaDB."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import datetime

import sqlalchemy as sa

from ti_pipeline.core import schema
from ti_pipeline.threat_actors.attack import AttackCatalog
from ti_pipeline.threat_actors.budget import RequestBudget
from ti_pipeline.threat_actors.client import MalpediaClient
from ti_pipeline.threat_actors.enrich import enrich_actors
from ti_pipeline.threat_actors.sync import SyncReport, stored_version, sync_malpedia

T1, T2, T3 = datetime(2026, 1, 1, 10, 0, 0), datetime(2026, 1, 2, 10, 0, 0), datetime(2026, 1, 3, 10, 0, 0)


def run_sync(server, warehouse, now: datetime, **client_args) -> SyncReport:
    async def run():
        args = {"budget": RequestBudget([(1_000_000, 60.0)]), "backoff_base": 0.01, **client_args}
        async with MalpediaClient(server.base_url, **args) as api:
            return await sync_malpedia(api, warehouse, concurrency=8, now=now)

    server.clear_log()
    return asyncio.run(run())


def actor_rows(warehouse) -> dict[str, sa.Row]:
    with warehouse.engine.connect() as conn:
        return {r.actor_id: r for r in conn.execute(sa.select(schema.threat_actors))}


def family_rows(warehouse) -> dict[str, sa.Row]:
    with warehouse.engine.connect() as conn:
        return {r.family_id: r for r in conn.execute(sa.select(schema.malware_families))}


def figures(table) -> dict[str, int]:
    c = table.changes
    return {"new": len(c.new), "updated": len(c.updated), "unchanged": len(c.unchanged), "removed": len(c.removed),
            "errors": len(table.errors)}


def test_first_sync_is_all_new_and_a_second_makes_only_the_version_request(full_malpedia_server, warehouse):
    """The whole shipped galaxy: 864 actors, 3260 families."""
    malpedia_server, snapshot = full_malpedia_server, full_malpedia_server.snapshot
    ACTORS, FAMILIES = 864, 3260
    first = run_sync(malpedia_server, warehouse, T1)
    assert first.previous_version is None and first.version == str(snapshot.version)
    assert figures(first.actors) == {"new": ACTORS, "updated": 0, "unchanged": 0, "removed": 0, "errors": 0}
    assert figures(first.families) == {"new": FAMILIES, "updated": 0, "unchanged": 0, "removed": 0, "errors": 0}
    assert first.actors.accounting.unaccounted == 0 and first.actors.accounting.written == ACTORS
    assert first.requests == 3 + ACTORS
    assert sorted(malpedia_server.requests) == sorted(
        ["/api/get/version", "/api/list/actors", "/api/get/families"] + [f"/api/get/actor/{a}" for a in snapshot.actors]
    )
    rows = actor_rows(warehouse)
    assert len(rows) == ACTORS and len(family_rows(warehouse)) == FAMILIES
    apt28 = rows["apt28"]
    assert (apt28.name, apt28.country, apt28.removed, apt28.created_at, apt28.last_updated) == ("APT28", "RU", False, T1, T1)
    assert stored_version(warehouse) == str(snapshot.version)

    second = run_sync(malpedia_server, warehouse, T2)
    assert malpedia_server.requests == ["/api/get/version"]
    assert second.requests == 1 and second.version_unchanged
    assert figures(second.actors) == {"new": 0, "updated": 0, "unchanged": 0, "removed": 0, "errors": 0}
    assert second.actors.total == ACTORS and second.families.total == FAMILIES
    assert second.actors.accounting.read == 0
    assert {r.last_updated for r in actor_rows(warehouse).values()} == {T1}


def test_changed_added_and_removed_actors_are_counted_exactly(malpedia_server, snapshot, warehouse):
    ACTORS, FAMILIES = len(snapshot.actors), len(snapshot.families)
    run_sync(malpedia_server, warehouse, T1)
    snapshot.actors["apt28"]["description"] = "Edited description."
    snapshot.actors["apt1"]["meta"] = {**snapshot.actors["apt1"]["meta"], "synonyms": ["Comment Panda", "New Alias"]}
    # The same value as a list instead of a string is the same content.
    kimsuky = snapshot.actors["kimsuky"]
    assert isinstance(kimsuky["meta"]["country"], str)
    kimsuky["meta"]["country"] = [kimsuky["meta"]["country"]]
    snapshot.actors["brand_new_actor"] = {"value": "Brand New Actor", "description": "Seen today.", "uuid":
                                          "00000000-0000-4000-8000-000000000001", "meta": {"country": "XX"},
                                          "families": []}
    del snapshot.actors["turla"], snapshot.actors["lazarus_group"]
    family_id, other_family = sorted(snapshot.families)[:2]
    snapshot.families[family_id]["alt_names"].append("Another Name")
    snapshot.families[other_family]["updated"] = "2030-01-01"  # a timestamp only: not a change
    snapshot.bump()

    report = run_sync(malpedia_server, warehouse, T2)
    assert figures(report.actors) == {"new": 1, "updated": 2, "unchanged": ACTORS - 4, "removed": 2, "errors": 0}
    assert report.actors.named(report.actors.changes.new) == ["Brand New Actor"]
    assert report.actors.named(report.actors.changes.updated) == ["APT1", "APT28"]
    assert report.actors.named(report.actors.changes.removed) == ["Lazarus Group", "Turla"]
    assert figures(report.families) == {"new": 0, "updated": 1, "unchanged": FAMILIES - 1, "removed": 0, "errors": 0}
    acc = report.actors.accounting
    assert (acc.read, acc.written, acc.filtered_total, acc.rejected_total) == (ACTORS - 1, 3, ACTORS - 4, 0)

    rows = actor_rows(warehouse)
    assert len(rows) == ACTORS + 1  # removed actors stay, marked
    assert (rows["apt28"].description, rows["apt28"].created_at, rows["apt28"].last_updated) == ("Edited description.", T1, T2)
    assert (rows["brand_new_actor"].created_at, rows["brand_new_actor"].last_updated) == (T2, T2)
    assert (rows["turla"].removed, rows["turla"].last_updated, rows["turla"].created_at) == (True, T2, T1)
    assert (rows["kimsuky"].last_updated, rows["apt3"].last_updated) == (T1, T1)
    fams = family_rows(warehouse)
    assert fams[family_id].last_updated == T2 and fams[other_family].last_updated == T1
    assert report.actors.total == ACTORS - 1

    # Turla comes back: restored (counted as updated), Lazarus stays removed and is not removed again.
    snapshot.actors["turla"] = copy.deepcopy(snapshot.actors["apt28"]) | {"value": "Turla"}
    snapshot.bump()
    report = run_sync(malpedia_server, warehouse, T3)
    assert figures(report.actors) == {"new": 0, "updated": 1, "unchanged": ACTORS - 1, "removed": 0, "errors": 0}
    assert report.actors.changes.restored == ["turla"]
    rows = actor_rows(warehouse)
    assert (rows["turla"].removed, rows["turla"].last_updated, rows["lazarus_group"].removed) == (False, T3, True)


def test_a_new_version_with_the_same_content_writes_nothing(malpedia_server, snapshot, warehouse):
    ACTORS = len(snapshot.actors)
    run_sync(malpedia_server, warehouse, T1)
    snapshot.bump()
    report = run_sync(malpedia_server, warehouse, T2)
    assert report.requests == 3 + ACTORS
    assert figures(report.actors) == {"new": 0, "updated": 0, "unchanged": ACTORS, "removed": 0, "errors": 0}
    assert report.actors.accounting.filtered == {"unchanged_content_hash": ACTORS}
    assert {r.last_updated for r in actor_rows(warehouse).values()} == {T1}
    assert stored_version(warehouse) == str(snapshot.version)


def test_a_failed_actor_is_rejected_kept_as_is_and_the_next_run_tries_again(malpedia_server, snapshot, warehouse):
    ACTORS = len(snapshot.actors)
    run_sync(malpedia_server, warehouse, T1)
    first_version = str(snapshot.version)
    snapshot.actors["apt28"]["description"] = "Edited."
    snapshot.actors["apt3"]["description"] = "Also edited."
    snapshot.bump()
    malpedia_server.fail("/api/get/actor/apt28", status=500, times=2, retry_after="0")
    malpedia_server.fail("/api/list/actors", status=429, times=1, retry_after="0")
    report = run_sync(malpedia_server, warehouse, T2, max_retries=1)
    assert figures(report.actors) == {"new": 0, "updated": 1, "unchanged": ACTORS - 2, "removed": 0, "errors": 1}
    assert report.actors.accounting.rejected == {"fetch_failed": 1}
    assert report.actors.accounting.unaccounted == 0
    assert report.requests == 3 + ACTORS + 2 and report.retries == 2
    error = report.actors.errors[0]
    assert error.source == f"{malpedia_server.base_url}/get/actor/apt28"
    assert error.reason == "fetch_failed: HTTP 500, gave up after 2 attempts"
    rows = actor_rows(warehouse)
    assert (rows["apt28"].removed, rows["apt28"].last_updated) == (False, T1)  # not removed, not changed
    assert stored_version(warehouse) == first_version  # so the next run syncs again

    report = run_sync(malpedia_server, warehouse, T3)
    assert figures(report.actors) == {"new": 0, "updated": 1, "unchanged": ACTORS - 1, "removed": 0, "errors": 0}
    assert actor_rows(warehouse)["apt28"].description == "Edited."
    assert stored_version(warehouse) == str(snapshot.version)


def test_malformed_actor_is_rejected_with_its_reason(malpedia_server, snapshot, warehouse):
    ACTORS = len(snapshot.actors)
    snapshot.actors["apt28"]["meta"] = ["not", "an", "object"]
    report = run_sync(malpedia_server, warehouse, T1)
    assert report.actors.accounting.rejected == {"malformed_record": 1}
    assert report.actors.errors[0].reason == "malformed_record: meta is a list, not an object"
    assert report.actors.accounting.written == ACTORS - 1 and report.actors.accounting.unaccounted == 0


def test_meta_fields_given_as_string_in_one_actor_and_list_in_another(malpedia_server, snapshot, warehouse):
    kinds = {
        key: type(a["meta"]["cfr-type-of-incident"]).__name__
        for key, a in snapshot.actors.items()
        if "cfr-type-of-incident" in a.get("meta", {})
    }
    as_str = next(k for k, kind in kinds.items() if kind == "str")
    as_list = next(k for k, kind in kinds.items() if kind == "list")
    run_sync(malpedia_server, warehouse, T1)
    rows = actor_rows(warehouse)
    assert json.loads(rows[as_str].meta)["cfr-type-of-incident"] == [snapshot.actors[as_str]["meta"]["cfr-type-of-incident"]]
    assert json.loads(rows[as_list].meta)["cfr-type-of-incident"] == sorted(
        set(snapshot.actors[as_list]["meta"]["cfr-type-of-incident"])
    )


def test_enrichment_runs_only_for_new_and_updated_actors(full_malpedia_server, warehouse):
    malpedia_server, snapshot = full_malpedia_server, full_malpedia_server.snapshot
    ACTORS = 864
    catalog = AttackCatalog.from_galaxy()
    run_sync(malpedia_server, warehouse, T1)
    first = enrich_actors(warehouse, catalog)
    assert (first.accounting.read, len(first.enriched), len(first.not_mapped)) == (ACTORS, 174, ACTORS - 174)
    assert first.accounting.unaccounted == 0
    techniques = warehouse.count(schema.actor_techniques)
    assert techniques == first.techniques_written > 0

    assert enrich_actors(warehouse, catalog).accounting.read == 0  # nothing changed, nothing re-matched

    apt28_before = warehouse.count(schema.actor_techniques, schema.actor_techniques.c.actor_id == "apt28")
    snapshot.actors["apt28"]["description"] = "Edited."
    unmapped = next(k for k, a in snapshot.actors.items() if a["value"] in first.not_mapped)
    snapshot.actors[unmapped]["meta"] = {**snapshot.actors[unmapped].get("meta", {}), "synonyms": ["Cozy Bear"]}
    snapshot.actors["new_fancy"] = {"value": "New Fancy", "meta": {"synonyms": "Fancy Bear"}, "families": []}
    del snapshot.actors["turla"]
    snapshot.bump()
    run_sync(malpedia_server, warehouse, T2)
    second = enrich_actors(warehouse, catalog)
    assert second.accounting.read == 3
    assert sorted(second.enriched) == sorted(["APT28", snapshot.actors[unmapped]["value"], "New Fancy"])
    assert second.methods == {"external_id": 1, "synonym": 2}
    at = schema.actor_techniques
    assert warehouse.count(at, at.c.actor_id == "apt28") == apt28_before
    with warehouse.engine.connect() as conn:
        new_rows = conn.execute(sa.select(at.c.match_method, at.c.confidence, at.c.attack_group)
                                .where(at.c.actor_id == "new_fancy").distinct()).all()
    assert new_rows == [("synonym", 0.75, "APT28 (G0007)")]
    assert warehouse.count(at, at.c.actor_id == unmapped) == warehouse.count(at, at.c.actor_id == "apt29")


def test_long_reference_lists_and_bad_ids(malpedia_server, snapshot, warehouse):
    """Malpedia lists outgrow MySQL's TEXT (64 KiB); an id longer than the key column is rejected."""
    family_id = sorted(snapshot.families)[0]
    urls = [f"https://example.org/report/{i:05d}/a-rather-long-path-segment" for i in range(2000)]
    snapshot.families[family_id]["urls"] = urls
    snapshot.actors["x" * 129] = {"value": "Too Long", "meta": {}}
    report = run_sync(malpedia_server, warehouse, T1)
    assert report.actors.accounting.rejected == {"malformed_record": 1}
    assert report.actors.errors[0].reason == f"malformed_record: id '{'x' * 40}' is not a string of 1..128 characters"
    stored = json.loads(family_rows(warehouse)[family_id].urls)
    assert stored == sorted(urls) and len(family_rows(warehouse)[family_id].urls) > 100_000
