"""The threat-actor assets run by Dagster against the loopback Malpedia server."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, materialize

from ti_pipeline.core import schema
from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.defs.resources import MalpediaResource, WarehouseResource
from ti_pipeline.defs.threat_actors import actor_techniques, malpedia_sync
from ti_pipeline.sample_data.malpedia_server import LocalMalpediaServer
from ti_pipeline_tests.threat_actors.snapshots import small_snapshot

TOKEN = "demo-token-never-shown"


@pytest.fixture
def server():
    with LocalMalpediaServer(small_snapshot(), token=TOKEN) as srv:
        yield srv


def resources(warehouse_url: str, server: LocalMalpediaServer, **malpedia) -> dict:
    args = {"requests_per_minute": 1_000_000, "requests_per_hour": 60_000_000, "backoff_base": 0.01, **malpedia}
    return {
        "warehouse": WarehouseResource(url=warehouse_url),
        "malpedia": MalpediaResource(url=server.base_url, token=TOKEN, **args),
    }


def run(instance, warehouse_url, server, **malpedia):
    server.clear_log()
    result = materialize(
        [malpedia_sync, actor_techniques], resources=resources(warehouse_url, server, **malpedia), instance=instance,
        raise_on_error=False,
    )
    meta = {
        m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()}
        for m in (e.materialization for e in result.get_asset_materialization_events())
    }
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    return result, meta, checks


def test_first_sync_then_a_no_change_sync_from_dagster(data_dir, warehouse_url, server):
    instance = DagsterInstance.ephemeral()
    n_actors, n_families = len(server.snapshot.actors), len(server.snapshot.families)
    result, meta, checks = run(instance, warehouse_url, server)
    assert result.success
    actors = meta["threat_actors/threat_actors"]
    assert (actors["total"], actors["new"], actors["updated"], actors["unchanged"], actors["removed"], actors["errors"]) == (
        n_actors, n_actors, 0, 0, 0, 0)
    assert (actors["read"], actors["written"], actors["unaccounted"]) == (n_actors, n_actors, 0)
    assert actors["requests"] == 3 + n_actors and actors["version_unchanged"] is False
    assert "APT28" in actors["new_names"]
    families = meta["threat_actors/malware_families"]
    assert (families["new"], families["total"]) == (n_families, n_families)
    techniques = meta["threat_actors/actor_techniques"]
    wh = Warehouse(warehouse_url)
    at = schema.actor_techniques
    mapped = wh.count(schema.threat_actors, schema.threat_actors.c.actor_id.in_(sa.select(at.c.actor_id).distinct()))
    assert techniques["actors_enriched"] == mapped == techniques["actors_with_techniques"] > 0
    assert techniques["actors_enriched"] + techniques["actors_not_mapped"] == n_actors
    assert techniques["dagster/row_count"] == wh.count(at)
    assert all(checks.values()) and len(checks) == 3

    result, meta, checks = run(instance, warehouse_url, server)
    assert result.success
    assert server.requests == ["/api/get/version"]
    actors = meta["threat_actors/threat_actors"]
    assert actors["version_unchanged"] is True and actors["requests"] == 1
    assert (actors["total"], actors["new"], actors["updated"], actors["read"]) == (n_actors, 0, 0, 0)
    assert actors["dagster/row_count"] == n_actors
    techniques = meta["threat_actors/actor_techniques"]
    assert (techniques["read"], techniques["actors_enriched"]) == (0, 0)
    assert all(checks.values())

    # The token went into request headers only: never into an event, log line or metadata.
    for run_record in instance.get_runs():
        assert all(TOKEN not in str(e) for e in instance.all_logs(run_record.run_id))
    wh.dispose()


def test_a_change_behind_a_429_is_synced_and_only_it_is_re_enriched(data_dir, warehouse_url, server):
    instance = DagsterInstance.ephemeral()
    assert run(instance, warehouse_url, server)[0].success
    server.snapshot.actors["apt28"]["description"] = "Edited."
    del server.snapshot.actors["turla"]
    server.snapshot.bump()
    server.fail("/api/get/version", status=429, retry_after="0")
    result, meta, _ = run(instance, warehouse_url, server)
    assert result.success
    actors = meta["threat_actors/threat_actors"]
    assert (actors["new"], actors["updated"], actors["removed"], actors["retries"]) == (0, 1, 1, 1)
    assert (actors["updated_names"], actors["removed_names"]) == ("APT28", "Turla")
    assert server.requests[:2] == ["/api/get/version", "/api/get/version"]
    techniques = meta["threat_actors/actor_techniques"]
    assert (techniques["read"], techniques["enriched_names"]) == (1, "APT28")


def test_an_actor_that_fails_to_fetch_is_quarantined_under_the_full_asset_key(data_dir, warehouse_url, server):
    server.fail("/api/get/actor/apt28", status=404)
    result, meta, _ = run(DagsterInstance.ephemeral(), warehouse_url, server)
    assert result.success
    assert meta["threat_actors/threat_actors"]["errors"] == 1
    q = schema.quarantine
    engine = sa.create_engine(warehouse_url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.select(q.c.asset, q.c.partition_key))]
    engine.dispose()
    assert rows == [("threat_actors/threat_actors", "all")]


def test_an_unreachable_version_fails_the_run_naming_the_url(data_dir, warehouse_url, server):
    server.fail("/api/get/version", status=503, times=3, retry_after="0")
    result, _, _ = run(DagsterInstance.ephemeral(), warehouse_url, server, max_retries=2)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"{server.base_url}/get/version: HTTP 503, gave up after 3 attempts" in failure.event_specific_data.error.message
    assert server.requests == ["/api/get/version"] * 3


def test_default_budget_is_the_public_quota(data_dir):
    budget = MalpediaResource().budget()
    assert budget.limits == [(60, 60.0), (2000, 3600.0)]


def test_job_and_daily_schedule_cover_the_group():
    from ti_pipeline.definitions import defs

    job = defs.resolve_job_def("threat_actors_job")
    assert set(job.asset_layer.executable_asset_keys) == {
        AssetKey(["threat_actors", "threat_actors"]),
        AssetKey(["threat_actors", "malware_families"]),
        AssetKey(["threat_actors", "actor_techniques"]),
    }
    schedule = defs.resolve_schedule_def("malpedia_daily")
    assert (schedule.job_name, schedule.cron_schedule, schedule.execution_timezone) == ("threat_actors_job", "0 3 * * *", "UTC")
