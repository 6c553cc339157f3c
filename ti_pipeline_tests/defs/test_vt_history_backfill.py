"""The documented history backfill: one asset backfill over the three VT assets, on a real instance, driven
by the backfill daemon's own iteration with runs executed in-process (as test_vt_feed_backfill.py).

The second sample day has one cut package of four (25 % > max_corrupt_share): its blocking check
packages_corrupt fails, so its Broccoli and load must not start while the other day's do; once its
packages are re-fetched, "Re-execute failed" exports it again and its Broccoli and load follow.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dagster import AssetKey
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG, PARTITION_NAME_TAG

from ti_pipeline.core import settings
from ti_pipeline.core.objectstore import LocalStore, open_store
from ti_pipeline.defs.vt_feed.broccoli import BROCCOLI_CLASSIFICATIONS_KEY
from ti_pipeline.defs.vt_feed.export import VT_FILE_REPORTS_KEY
from ti_pipeline.defs.vt_feed.load import VT_IOC_FILE_HASHES_KEY
from ti_pipeline.sample_data.broccoli import sample_vt_sha1s, write_broccoli_objects
from ti_pipeline.sample_data.vt import write_vt_feed
from ti_pipeline_tests.defs.test_vt_feed_backfill import (
    LAUNCH,
    REEXECUTE,
    _drain,
    _mutate,
    _runs,
    backfill_daemon,
)

FIRST, BLOCKED = "2020-11-01", "2020-11-02"
THREE = (VT_FILE_REPORTS_KEY, BROCCOLI_CLASSIFICATIONS_KEY, VT_IOC_FILE_HASHES_KEY)
DOWNSTREAM = {BROCCOLI_CLASSIFICATIONS_KEY, VT_IOC_FILE_HASHES_KEY}
# Steps forked from one process that imported the code location, not each spawned and importing it anew.
FORKSERVER = {"execution": {"config": {"start_method": {"forkserver": {"preload_modules": ["ti_pipeline.definitions"]}}}}}


def _days_by_assets(instance, backfill_id: str) -> dict[frozenset[AssetKey], list[str]]:
    """What each run of the backfill was for: its assets -> the days (a ranged run: its first day)."""
    runs: dict[frozenset[AssetKey], list[str]] = {}
    for run in _runs(instance, backfill_id):
        day = run.tags.get(PARTITION_NAME_TAG) or run.tags[ASSET_PARTITION_RANGE_START_TAG]
        runs.setdefault(frozenset(run.asset_selection), []).append(day)
    return {assets: sorted(days) for assets, days in runs.items()}


@pytest.mark.usefixtures("data_dir")
def test_a_day_failing_a_blocking_check_holds_back_its_broccoli_and_load_until_redone(monkeypatch):
    monkeypatch.setenv("TI_STEP_RETRIES", "0")  # for the step processes (data_dir cleared the suite's setting)
    feed = LocalStore(Path(settings.resolve("TI_VT_FEED_URI").removeprefix("file://")))
    write_vt_feed(feed, days=(FIRST, BLOCKED))
    write_broccoli_objects(open_store(settings.resolve("TI_BROCCOLI_URI")), sample_vt_sha1s())

    with backfill_daemon() as (instance, context):
        days = {"range": {"start": FIRST, "end": BLOCKED}}
        first_id = _mutate(
            context,
            LAUNCH,
            {
                "partitionsByAssets": [{"assetKey": {"path": key.path}, "partitions": days} for key in THREE],
                "runConfigData": FORKSERVER,
                "title": "vt history",
            },
            "launchPartitionBackfill",
        )
        first = _drain(context, instance, first_id)

        # One ranged export run for both days (failed: BLOCKED's check), then one Broccoli + load run, FIRST's.
        assert _days_by_assets(instance, first_id) == {
            frozenset({VT_FILE_REPORTS_KEY}): [FIRST],
            frozenset(DOWNSTREAM): [FIRST],
        }
        statuses = {frozenset(r.asset_selection): r.status for r in _runs(instance, first_id)}
        assert statuses == {frozenset({VT_FILE_REPORTS_KEY}): DagsterRunStatus.FAILURE,
                            frozenset(DOWNSTREAM): DagsterRunStatus.SUCCESS}
        for key in THREE:
            assert instance.get_materialized_partitions(key) == {FIRST}, key
        assert first.status == BulkActionStatus.COMPLETED_FAILED
        data = first.get_asset_backfill_data(context.create_request_context().asset_graph)
        for key in THREE:
            assert list(data.failed_and_downstream_subset.get_partitions_subset(key).get_partition_keys()) == [BLOCKED]

        # The packages re-fetched (the day's folder replaced by whole packages), "Re-execute failed".
        shutil.rmtree(feed.root / BLOCKED.replace("-", ""))
        write_vt_feed(feed, days=(BLOCKED,))
        retry_id = _mutate(
            context, REEXECUTE, {"parentRunId": first_id, "strategy": "FROM_FAILURE"}, "reexecutePartitionBackfill"
        )
        retry = _drain(context, instance, retry_id)

        assert retry.status == BulkActionStatus.COMPLETED_SUCCESS
        assert _days_by_assets(instance, retry_id) == {
            frozenset({VT_FILE_REPORTS_KEY}): [BLOCKED],
            frozenset(DOWNSTREAM): [BLOCKED],
        }
        for key in THREE:
            assert instance.get_materialized_partitions(key) == {FIRST, BLOCKED}, key


@pytest.mark.usefixtures("data_dir")
def test_one_day_of_the_three_assets_in_one_run_loads_only_after_passing_checks():
    """A day materialized from the UI with its Broccoli and load selected: one run, gated inside it."""
    from dagster import DagsterInstance, materialize

    from ti_pipeline.definitions import defs
    from ti_pipeline.defs.resources import build_resources

    write_vt_feed(LocalStore(Path(settings.resolve("TI_VT_FEED_URI").removeprefix("file://"))), days=(FIRST, BLOCKED))
    write_broccoli_objects(open_store(settings.resolve("TI_BROCCOLI_URI")), sample_vt_sha1s())
    assets = list({id(a): a for a in defs.assets if set(a.keys) & set(THREE)}.values())
    instance = DagsterInstance.ephemeral()
    for day in (FIRST, BLOCKED):
        result = materialize(assets, selection=list(THREE), partition_key=day, instance=instance,
                             resources=build_resources(), raise_on_error=False)
        assert result.success == (day == FIRST)
        assert {e.asset_key for e in result.get_asset_materialization_events()} == (set(THREE) if day == FIRST else set())
        started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
        assert ("vt_feed__ioc_file_hashes" in started) == (day == FIRST)
        assert ("vt_feed__broccoli_classifications" in started) == (day == FIRST)
