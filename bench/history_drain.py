"""How a 2,200-day VT history drains into Broccoli and the load: the declarative automation, and the asset
backfill over the three VT assets (docs/runbook.md, "History backfill", holds the figures).

A Dagster instance on SQLite storage gets what the export's runs leave for every day of the history
(``ti_pipeline_tests/defs/vt_export_events.py``: the day's materialization, then its two blocking check
results; every 100th day fails packages_corrupt and is not materialized), without running anything.

- Automation (default): the code location's conditions are evaluated tick after tick, as the
  ``vt_load_automation`` sensor's daemon evaluates them (``evaluate_automation_conditions``), each tick's
  requested Broccoli and load partitions then recorded as materialized, until a tick requests nothing;
  over ``RECENT_DAYS`` (7, the code location's window) and over the whole history.
- ``--backfill``: one asset backfill over the three assets, launched as the UI launches it and driven by
  the backfill daemon's own iteration on the code location, with a launcher that launches nothing: each
  run it submits is recorded as ended with what it would have materialized (a ranged export run fails
  when one of its days fails its check).

The rejected design (the landing sensor made to honour the checks) requested at most 4 days per 120 s
tick: 2,200 days take 550 ticks, 18 h 20 min, before any run time.

    .venv/bin/python bench/history_drain.py                     # automation, 2,200 days
    .venv/bin/python bench/history_drain.py --days 300 --backfill
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dagster import (
    AssetMaterialization,
    AssetSelection,
    DagsterInstance,
    Definitions,
    PartitionKeyRange,
    evaluate_automation_conditions,
)
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.storage.dagster_run import RunsFilter
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ti_pipeline_tests: what the export's runs record

from ti_pipeline.defs.partitions import vt_days  # noqa: E402
from ti_pipeline.defs.resources import build_resources  # noqa: E402
from ti_pipeline.defs.vt_feed import broccoli, export, load  # noqa: E402
from ti_pipeline.defs.vt_feed.automation import (  # noqa: E402
    GATED_KEYS,
    RECENT_DAYS,
    load_condition,
    with_load_condition,
)
from ti_pipeline.defs.vt_feed.export import MAX_PARTITIONS_PER_RUN as RUN_DAYS  # noqa: E402
from ti_pipeline.defs.vt_feed.export import VT_FILE_REPORTS_KEY  # noqa: E402
from ti_pipeline_tests.defs.test_vt_feed_backfill import LAUNCH, _mutate  # noqa: E402
from ti_pipeline_tests.defs.vt_export_events import new_run, record_export  # noqa: E402

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # the latest vt_days partition is 2026-12-01, D-2 is 11-30
LOGGER = logging.getLogger("history_drain")


def history(days: int) -> list[str]:
    last = (NOW - timedelta(days=2)).date()
    return [(last - timedelta(days=n)).isoformat() for n in reversed(range(days))]


class Sensor:
    """The sensor's evaluations in turn, its cursor carried from tick to tick."""

    def __init__(self, instance: DagsterInstance, defs: Definitions):
        self.instance, self.defs, self.cursor = instance, defs, None

    def tick(self) -> tuple[float, dict]:
        started = time.perf_counter()
        result = evaluate_automation_conditions(
            self.defs, self.instance, asset_selection=AssetSelection.assets(*GATED_KEYS), evaluation_time=NOW,
            cursor=self.cursor,
        )
        self.cursor = result.cursor
        return time.perf_counter() - started, {key: result.get_requested_partitions(key) for key in GATED_KEYS}

    def drain(self, max_ticks: int) -> list[tuple[float, int]]:
        """Ticks until one requests nothing, each followed by its runs' materializations: (seconds, days)."""
        ticks = []
        for _ in range(max_ticks):
            seconds, requested = self.tick()
            ticks.append((seconds, len(requested[GATED_KEYS[-1]])))
            if not any(requested.values()):
                break
            for key, days in requested.items():
                for day in days:
                    self.instance.report_runless_asset_event(AssetMaterialization(asset_key=key, partition=day))
        return ticks


def measure(days: list[str], failing: set[str], window_days: int) -> None:
    assets = with_load_condition([*broccoli.assets, *load.assets], load_condition(window_days))
    defs = Definitions(assets=[*export.assets, *assets], resources=build_resources())
    with tempfile.TemporaryDirectory() as home, DagsterInstance.from_config(home) as instance:
        sensor = Sensor(instance, defs)
        first, _ = sensor.tick()  # turned on before the history backfill
        started = time.perf_counter()
        for start in range(0, len(days), RUN_DAYS):  # one run per 60 days, as the backfill policy runs them
            run_id = new_run(instance)
            for day in days[start : start + RUN_DAYS]:
                record_export(instance, day, failing=("packages_corrupt",) if day in failing else (), run_id=run_id)
        recorded = time.perf_counter() - started
        ticks = sensor.drain(10)
        loaded = len(instance.get_materialized_partitions(GATED_KEYS[-1]))
        print(
            f"window {window_days:>5} days: {len(days):,} exported days ({len(failing)} failing) recorded in "
            f"{recorded:.0f} s; first tick {first:.2f} s; then {len(ticks)} tick(s): "
            + ", ".join(f"{n:,} day(s) in {s:.2f} s" for s, n in ticks)
            + f"; loaded {loaded:,}"
        )


def simulate(instance: DagsterInstance, run, failing: set[str]) -> None:
    """What a backfill run leaves, without running it: the export's days (blocked ones without their
    materialization), or the day's Broccoli and load materializations; then the run's end."""
    if run.asset_selection == {VT_FILE_REPORTS_KEY}:
        start = run.tags.get(ASSET_PARTITION_RANGE_START_TAG) or run.tags[PARTITION_NAME_TAG]
        end = run.tags.get(ASSET_PARTITION_RANGE_END_TAG) or start
        days = vt_days.get_partition_keys_in_range(PartitionKeyRange(start, end))
        for day in days:
            record_export(instance, day, failing=("packages_corrupt",) if day in failing else (), run_id=run.run_id)
        ended = DagsterEventType.RUN_FAILURE if failing.intersection(days) else DagsterEventType.RUN_SUCCESS
    else:
        for key in sorted(run.asset_selection):
            data = StepMaterializationData(AssetMaterialization(asset_key=key, partition=run.tags[PARTITION_NAME_TAG]))
            instance.report_dagster_event(
                DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, run.job_name, event_specific_data=data),
                run_id=run.run_id,
            )
        ended = DagsterEventType.RUN_SUCCESS
    instance.report_dagster_event(DagsterEvent(ended.value, run.job_name), run_id=run.run_id)


def backfill(days: list[str], failing: set[str]) -> None:
    """The documented way: one asset backfill over the three assets, driven by the backfill daemon's own
    iteration on the code location; runs are not executed (a launcher that launches nothing), each
    submitted run is recorded as ended with what it would have materialized."""
    mocked = {"run_launcher": {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"},
              "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}}
    target = InProcessTestWorkspaceLoadTarget(
        InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="ti_pipeline.definitions", attribute="defs"))
    )
    with (
        instance_for_test(overrides=mocked) as instance,
        create_test_daemon_workspace_context(target, instance) as context,
    ):
        partitions = {"range": {"start": days[0], "end": days[-1]}}
        backfill_id = _mutate(context, LAUNCH, {
            "partitionsByAssets": [{"assetKey": {"path": key.path}, "partitions": partitions}
                                   for key in (VT_FILE_REPORTS_KEY, *GATED_KEYS)],
        }, "launchPartitionBackfill")
        done: set[str] = set()
        iterations, planning, runs = [], 0.0, {"export": 0, "load": 0}
        while instance.get_backfill(backfill_id).status == BulkActionStatus.REQUESTED and len(iterations) < 50:
            started = time.perf_counter()
            list(execute_backfill_iteration(context, LOGGER))
            planning += time.perf_counter() - started
            new = [r for r in instance.get_runs(filters=RunsFilter(tags={BACKFILL_ID_TAG: backfill_id})) if r.run_id not in done]
            iterations.append(len(new))
            for run in new:
                simulate(instance, run, failing)
                runs["export" if run.asset_selection == {VT_FILE_REPORTS_KEY} else "load"] += 1
                done.add(run.run_id)
        print(
            f"asset backfill over the three assets, {len(days):,} days ({len(failing)} failing): "
            f"{len(iterations)} daemon iterations ({planning:.1f} s of planning in all), runs launched per "
            f"iteration {iterations}: {runs['export']} export runs, {runs['load']:,} Broccoli + load runs; "
            f"loaded {len(instance.get_materialized_partitions(GATED_KEYS[-1])):,}; "
            f"status {instance.get_backfill(backfill_id).status.value}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=2_200)
    parser.add_argument("--failing-every", type=int, default=100, help="every N-th day fails packages_corrupt")
    parser.add_argument("--backfill", action="store_true", help="measure the asset backfill instead of the sensor")
    args = parser.parse_args()
    days = history(args.days)
    failing = set(days[args.failing_every - 1 :: args.failing_every]) | {days[-3]}  # one inside the window too
    print(f"{Path(__file__).name}: {len(days):,} days {days[0]} .. {days[-1]}, evaluated at {NOW.isoformat()}")
    if args.backfill:
        backfill(days, failing)
        return
    measure(days, failing, RECENT_DAYS)
    measure(days, failing, args.days + 7)


if __name__ == "__main__":
    main()
