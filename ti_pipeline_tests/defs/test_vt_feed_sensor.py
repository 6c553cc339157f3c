"""vt_parquet_landed with a real ephemeral instance: one request per completed export, cursor as a mark."""

from __future__ import annotations

import json

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context

from ti_pipeline.core.exports import VT_FILE_REPORTS, part_name, success_name
from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.defs.resources import ObjectStoreResource
from ti_pipeline.defs.vt_feed.automation import MAX_REQUESTS_PER_TICK, vt_parquet_landed
from ti_pipeline.vt_feed.load.landing import Mark
from ti_pipeline_tests.vt_feed.load.exportdata import report, write_partition


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "export")


@pytest.fixture
def tick(store):
    instance = DagsterInstance.ephemeral()

    def _tick(cursor: str | None) -> SensorResult:
        context = build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={"export_store": ObjectStoreResource(setting="TI_EXPORT_URI", uri=store.uri)},
        )
        result = vt_parquet_landed(context)
        assert isinstance(result, SensorResult)
        return result

    yield _tick
    instance.dispose()


def export(store: LocalStore, day: str) -> None:
    write_partition(store, "vt_file_reports", day, [report(1, "2024-01-01 10:00:00")], VT_FILE_REPORTS)


def test_a_completed_export_gets_one_run_and_the_same_state_none(store, tick):
    assert tick(None).run_requests == []
    export(store, "2024-01-01")
    # A day whose export is still being written (parts, no manifest) is not loaded.
    store.write_bytes(part_name("vt_file_reports", "2024-01-02", 0), b"PAR1...")
    first = tick(None)
    [request] = first.run_requests
    generation = store.stat(success_name("vt_file_reports", "2024-01-01")).generation
    assert request.partition_key == "2024-01-01"
    assert request.run_key == f"vt_load:2024-01-01:{generation}"
    assert vt_parquet_landed.job_name == "vt_load_job"
    second = tick(first.cursor)
    assert second.run_requests == []
    assert second.cursor == first.cursor


def test_a_re_export_is_a_new_run_key(store, tick):
    export(store, "2024-01-01")
    first = tick(None)
    export(store, "2024-01-01")
    second = tick(first.cursor)
    [before], [after] = first.run_requests, second.run_requests
    assert after.partition_key == before.partition_key == "2024-01-01"
    assert after.run_key != before.run_key


def test_requests_per_tick_are_capped_and_the_cursor_is_a_high_water_mark(store, tick):
    days = [f"2024-01-{d:02d}" for d in range(1, MAX_REQUESTS_PER_TICK + 3)]
    for day in days:
        export(store, day)
    first = tick(None)
    assert [r.partition_key for r in first.run_requests] == days[:MAX_REQUESTS_PER_TICK]
    mark = json.loads(first.cursor)
    assert set(mark) == {"updated", "name"}
    assert mark["name"] == success_name("vt_file_reports", days[MAX_REQUESTS_PER_TICK - 1])
    second = tick(first.cursor)
    assert [r.partition_key for r in second.run_requests] == days[MAX_REQUESTS_PER_TICK:]
    assert Mark.decode(second.cursor) > Mark.decode(first.cursor)
    assert tick(second.cursor).run_requests == []


def test_a_day_outside_the_partitions_is_skipped_not_requested(store, tick):
    export(store, "2019-06-01")
    result = tick(None)
    assert result.run_requests == []
    assert Mark.decode(result.cursor).name == success_name("vt_file_reports", "2019-06-01")


def test_the_requested_run_loads_the_landed_day(data_dir):
    """End to end: export a sample day, let the sensor see it, run what it requests, find the rows."""
    import sqlalchemy as sa
    from dagster import AssetKey, materialize

    from ti_pipeline.core import settings
    from ti_pipeline.core.objectstore import open_store
    from ti_pipeline.definitions import defs
    from ti_pipeline.defs.resources import build_resources
    from ti_pipeline.sample_data.broccoli import sample_vt_sha1s, write_broccoli_objects
    from ti_pipeline.sample_data.vt import write_vt_feed

    write_vt_feed(open_store(settings.resolve("TI_VT_FEED_URI")))
    write_broccoli_objects(open_store(settings.resolve("TI_BROCCOLI_URI")), sample_vt_sha1s())
    assets = {k: a for a in defs.assets for k in a.keys}
    instance = DagsterInstance.ephemeral()
    resources = build_resources()
    one_process = {"vt_feed__vt_file_reports": {"config": {"workers": 1}}}
    export_run = materialize([assets[AssetKey(["vt_feed", "vt_file_reports"])]], partition_key="2020-11-02",
                             instance=instance, resources=resources, run_config={"ops": one_process})
    assert export_run.success

    context = build_sensor_context(instance=instance, resources={"export_store": resources["export_store"]})
    [request] = vt_parquet_landed(context).run_requests
    assert request.partition_key == "2020-11-02"
    job = defs.resolve_job_def(vt_parquet_landed.job_name)
    selected = [AssetKey(["vt_feed", "broccoli_classifications"]), AssetKey(["vt_feed", "ioc_file_hashes"])]
    assert set(job.asset_layer.executable_asset_keys) == set(selected)
    load_run = materialize([assets[k] for k in selected], partition_key=request.partition_key, instance=instance,
                           resources=resources, tags=request.tags, run_config=request.run_config or None)
    assert load_run.success

    manifest = json.loads((data_dir / "export" / "vt_file_reports" / "date=2020-11-02" / "_SUCCESS").read_text())
    [load] = [e for e in load_run.get_asset_materialization_events() if e.asset_key == AssetKey(["vt_feed", "ioc_file_hashes"])]
    meta = {k: v.value for k, v in load.materialization.metadata.items()}
    engine = sa.create_engine(settings.resolve("TI_WAREHOUSE_URL"))
    with engine.connect() as conn:
        loaded = conn.execute(sa.text("SELECT COUNT(*) FROM ioc_file_hashes WHERE source = 'VIRUS_TOTAL'")).scalar_one()
    engine.dispose()
    # Every exported row is read; those the default import policy admits are in the table, the rest counted.
    assert meta["read"] == manifest["rows"] == meta["written"] + meta["filtered.classification_not_imported"]
    assert loaded == meta["inserted"] == meta["written"] > 0
    assert meta["filtered.classification_not_imported"] > 0
    instance.dispose()
