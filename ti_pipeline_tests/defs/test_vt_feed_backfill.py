"""A VT history backfill on a real Dagster instance: a 5-day range in one run (the multi_run policy), day 3's
feed broken. Launched and re-executed through the UI's GraphQL mutations and driven by the backfill
daemon's own iteration (``execute_backfill_iteration``), on the real code location with its multiprocess
executor; runs are launched in-process (``SyncInMemoryRunLauncher``) so the test waits for nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, materialize
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    BACKFILL_ID_TAG,
    PARTITION_NAME_TAG,
)
from dagster._core.test_utils import (
    InProcessTestWorkspaceLoadTarget,
    create_test_daemon_workspace_context,
    instance_for_test,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._daemon.backfill import execute_backfill_iteration
from dagster_graphql.test.utils import execute_dagster_graphql

from ti_pipeline.core import settings
from ti_pipeline.core.exports import require_export
from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.defs.partitions import vt_days
from ti_pipeline.defs.resources import ObjectStoreResource, WarehouseResource
from ti_pipeline.defs.vt_feed.export import vt_file_reports
from ti_pipeline.sample_data.vt import write_vt_feed

KEY = AssetKey(["vt_feed", "vt_file_reports"])
DAYS = ("2020-11-01", "2020-11-02", "2020-11-03", "2020-11-04", "2020-11-05")
BROKEN = DAYS[2]
# One worker per run; the second day's one cut package of four admitted (the gate has its own test below).
ONE_WORKER = {"ops": {"vt_feed__vt_file_reports": {"config": {"workers": 1, "max_corrupt_share": 0.5}}}}
TERMINAL = {BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED_FAILED, BulkActionStatus.FAILED}

LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
  }
}"""
REEXECUTE = """
mutation($params: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
  }
}"""



@contextmanager
def backfill_daemon() -> Iterator[tuple[DagsterInstance, object]]:
    """A test instance whose runs execute in process as they are launched, and the daemon's workspace
    context on the code location: what the backfill daemon's own iterations (``_drain``) run against."""
    coordinator = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    launcher = {"module": "dagster._core.launcher.sync_in_memory_run_launcher", "class": "SyncInMemoryRunLauncher"}
    target = InProcessTestWorkspaceLoadTarget(
        InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="ti_pipeline.definitions", attribute="defs"))
    )
    with (
        instance_for_test(overrides={"run_launcher": launcher, "run_coordinator": coordinator}) as instance,
        create_test_daemon_workspace_context(target, instance) as context,
    ):
        yield instance, context

def _mutate(context, query: str, params: dict, field: str) -> str:
    result = execute_dagster_graphql(context.create_request_context(), query, variables={"params": params})
    assert not result.errors, result.errors
    answer = result.data[field]
    assert answer["__typename"] == "LaunchBackfillSuccess", answer
    return answer["backfillId"]


def _drain(context, instance: DagsterInstance, backfill_id: str):
    """The backfill daemon's iterations until the backfill is done (its runs execute during them)."""
    logger = logging.getLogger("backfill_test")
    for _ in range(20):
        errors = [e for e in execute_backfill_iteration(context, logger) if e is not None]
        assert not errors, errors
        backfill = instance.get_backfill(backfill_id)
        if backfill.status in TERMINAL:
            return backfill
    raise AssertionError(f"backfill {backfill_id} still {instance.get_backfill(backfill_id).status}")


def _runs(instance: DagsterInstance, backfill_id: str):
    return instance.get_runs(filters=RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))


def _day_metadata(instance: DagsterInstance, day: str) -> dict:
    [record] = instance.fetch_materializations(AssetRecordsFilter(asset_key=KEY, asset_partitions=[day]), limit=1).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def _counts(meta: dict) -> dict:
    """The day's figures (every integer entry: accounting, packages, bytes, parts)."""
    return {k: v for k, v in meta.items() if isinstance(v, int)}


def _one_day_runs(tmp_path: Path, feed: Path) -> dict[str, dict]:
    """Each day alone (``materialize`` of one partition, its own export and warehouse): the reference figures."""
    resources = {
        "warehouse": WarehouseResource(url=f"sqlite:///{tmp_path / 'reference.sqlite'}"),
        "vt_feed": ObjectStoreResource(setting="TI_VT_FEED_URI", uri=feed.as_uri()),
        "export_store": ObjectStoreResource(setting="TI_EXPORT_URI", uri=(tmp_path / "reference").as_uri()),
    }
    instance = DagsterInstance.ephemeral()
    for day in DAYS:
        assert materialize([vt_file_reports], partition_key=day, resources=resources, instance=instance,
                           run_config=ONE_WORKER).success
    return {day: _counts(_day_metadata(instance, day)) for day in DAYS}


def _break(feed: LocalStore, day: str) -> Path:
    """Day 3's feed folder broken: one package object is listed but gone (a dangling link), so the
    day cannot be listed and its export fails before it reads a package."""
    folder = feed.root / day.replace("-", "")
    package = sorted(folder.iterdir())[0]
    package.unlink()
    package.symlink_to(folder / "gone")
    return package


@pytest.mark.usefixtures("data_dir")
def test_a_broken_day_fails_alone_and_its_backfill_reexecution_redoes_only_it(tmp_path: Path):
    feed = LocalStore(Path(settings.resolve("TI_VT_FEED_URI").removeprefix("file://")))
    write_vt_feed(feed, days=DAYS)
    reference = _one_day_runs(tmp_path, feed.root)
    broken = _break(feed, BROKEN)
    export = LocalStore(Path(settings.resolve("TI_EXPORT_URI").removeprefix("file://")))

    with backfill_daemon() as (instance, context):
        # The history backfill as the UI launches it: the 5 days of the export asset, one worker per run.
        first_id = _mutate(
            context,
            LAUNCH,
            {
                "partitionsByAssets": [
                    {"assetKey": {"path": KEY.path}, "partitions": {"range": {"start": DAYS[0], "end": DAYS[-1]}}}
                ],
                "runConfigData": ONE_WORKER,
                "title": "vt history",
            },
            "launchPartitionBackfill",
        )
        first = _drain(context, instance, first_id)

        # One ranged run (the multi_run policy), failed, naming the broken day.
        [run] = _runs(instance, first_id)
        assert (run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG]) == (DAYS[0], DAYS[-1])
        assert run.status == DagsterRunStatus.FAILURE
        [failure] = [e for e in instance.all_logs(run.run_id) if e.is_dagster_event and e.dagster_event.is_step_failure]
        error = failure.dagster_event.step_failure_data.error
        assert f"1 of 5 day(s) failed: {BROKEN}" in error.message and "FileNotFoundError" in error.message

        # Days 1, 2, 4, 5 materialized as they finished, each with its own figures: those of a one-day run.
        good = [day for day in DAYS if day != BROKEN]
        assert instance.get_materialized_partitions(KEY) == set(good)
        for day in good:
            meta = _day_metadata(instance, day)
            assert _counts(meta) == reference[day], day
            assert meta["dagster/row_count"] == require_export(export, "vt_file_reports", day).manifest.rows > 0
            assert meta["partitions"] == day and f"sample_rows[{day}]" in meta
        assert len({_counts(_day_metadata(instance, day))["read"] for day in good}) > 1  # not one range's totals
        assert export.stat(f"vt_file_reports/date={BROKEN}/_SUCCESS") is None
        # Per-day check results: two checks for each finished day, none for the broken one.
        evaluations = [
            e.dagster_event.event_specific_data
            for e in instance.all_logs(run.run_id)
            if e.is_dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        assert sorted((ev.partition, ev.check_name) for ev in evaluations) == sorted(
            (day, name) for day in good for name in ("counts_reconcile", "packages_corrupt")
        )

        # The backfill and the asset's partition status say the same: day 3 failed, the rest materialized.
        data = first.get_asset_backfill_data(context.create_request_context().asset_graph)
        assert first.status == BulkActionStatus.COMPLETED_FAILED
        assert set(data.materialized_subset.get_partitions_subset(KEY).get_partition_keys()) == set(good)
        assert list(data.failed_and_downstream_subset.get_partitions_subset(KEY).get_partition_keys()) == [BROKEN]
        status = get_and_update_asset_status_cache_value(instance, KEY, vt_days)
        assert list(status.deserialize_failed_partition_subsets(vt_days).get_partition_keys()) == [BROKEN]

        # The feed fixed, "Re-execute failed" on the backfill page: a new backfill of day 3 only.
        broken.unlink()
        write_vt_feed(feed, days=DAYS)  # the same seed writes the same bytes
        retry_id = _mutate(
            context, REEXECUTE, {"parentRunId": first_id, "strategy": "FROM_FAILURE"}, "reexecutePartitionBackfill"
        )
        retry = _drain(context, instance, retry_id)

        assert retry.status == BulkActionStatus.COMPLETED_SUCCESS
        [run] = _runs(instance, retry_id)
        assert run.status == DagsterRunStatus.SUCCESS
        run_days = (
            [run.tags[PARTITION_NAME_TAG]]
            if PARTITION_NAME_TAG in run.tags
            else [run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG]]
        )
        assert set(run_days) == {BROKEN}
        redone = [
            e.dagster_event.partition
            for e in instance.all_logs(run.run_id)
            if e.is_dagster_event and e.dagster_event.is_step_materialization
        ]
        assert redone == [BROKEN]
        assert instance.get_materialized_partitions(KEY) == set(DAYS)
        assert _counts(_day_metadata(instance, BROKEN)) == reference[BROKEN]
        status = get_and_update_asset_status_cache_value(instance, KEY, vt_days)
        assert not list(status.deserialize_failed_partition_subsets(vt_days).get_partition_keys())
        assert all(require_export(export, "vt_file_reports", day).manifest.rows > 0 for day in DAYS)
