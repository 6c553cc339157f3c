"""vt_load_automation on a real (ephemeral) instance: which days' Broccoli and load a tick requests.

The export's results are recorded as its runs leave them (``vt_export_events``: the day's materialization
when no blocking check failed, then its check evaluations), and the code location's own conditions are
evaluated tick after tick with ``evaluate_automation_conditions``, as the sensor's daemon evaluates them.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dagster import AssetSelection, DagsterInstance, evaluate_automation_conditions

from ti_pipeline.definitions import defs
from ti_pipeline.defs.vt_feed.automation import GATED_KEYS, vt_load_automation
from ti_pipeline.defs.vt_feed.export import VT_FILE_REPORTS_KEY
from ti_pipeline_tests.defs.vt_export_events import BLOCKING, record_checks, record_export

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # the latest vt_days partition is 2026-12-01
NIGHTLY = "2026-11-30"  # D-2, what vt_file_reports_daily exported at 02:00
CORRUPT = "2026-11-29"
RACING = "2026-11-28"
HISTORY = "2021-03-07"
@pytest.fixture
def tick():
    instance = DagsterInstance.ephemeral()
    cursor = None

    def _tick() -> dict[str, set[str]]:
        """One evaluation; the days requested, per gated asset."""
        nonlocal cursor
        result = evaluate_automation_conditions(
            defs, instance, asset_selection=AssetSelection.assets(*GATED_KEYS), evaluation_time=NOW, cursor=cursor
        )
        cursor = result.cursor
        return {key.path[-1]: set(result.get_requested_partitions(key)) for key in GATED_KEYS}

    _tick.instance = instance
    yield _tick
    instance.dispose()


def test_a_day_loads_only_once_its_export_passed_its_blocking_checks(tick):
    instance = tick.instance
    assert tick() == {"broccoli_classifications": set(), "ioc_file_hashes": set()}

    record_export(instance, NIGHTLY)
    record_export(instance, CORRUPT, failing=("packages_corrupt",))
    racing = record_export(instance, RACING, checks=False)  # materialized, its checks not yet recorded
    record_export(instance, HISTORY)
    # The nightly day alone: the corrupt one is not materialized and failed its check, the racing one has
    # no check result yet, the history day is older than RECENT_DAYS. Broccoli and load together (one run).
    assert tick() == {"broccoli_classifications": {NIGHTLY}, "ioc_file_hashes": {NIGHTLY}}

    record_checks(instance, RACING, racing)
    assert tick() == {"broccoli_classifications": {RACING}, "ioc_file_hashes": {RACING}}
    assert tick() == {"broccoli_classifications": set(), "ioc_file_hashes": set()}

    # The corrupt day re-exported from re-fetched packages: its checks pass, it loads.
    record_export(instance, CORRUPT)
    assert tick() == {"broccoli_classifications": {CORRUPT}, "ioc_file_hashes": {CORRUPT}}


def test_a_recent_day_re_exported_with_a_failing_check_does_not_load_again(tick):
    instance = tick.instance
    tick()
    record_export(instance, NIGHTLY)
    assert tick()["ioc_file_hashes"] == {NIGHTLY}
    # A re-export of a loaded day whose counts do not reconcile: no materialization, a failed check aimed
    # at the previous one.
    record_export(instance, NIGHTLY, failing=("counts_reconcile",))
    assert tick()["ioc_file_hashes"] == set()
    record_export(instance, NIGHTLY)
    assert tick()["ioc_file_hashes"] == {NIGHTLY}


def test_days_exported_before_the_first_tick_are_left_to_the_history_backfill(tick):
    """Turning the sensor on loads nothing by itself: only what is exported after its first tick."""
    record_export(tick.instance, NIGHTLY)
    assert tick() == {"broccoli_classifications": set(), "ioc_file_hashes": set()}
    record_export(tick.instance, NIGHTLY)
    assert tick() == {"broccoli_classifications": {NIGHTLY}, "ioc_file_hashes": {NIGHTLY}}


def test_the_sensor_covers_the_two_gated_assets_and_starts_stopped():
    graph = defs.resolve_asset_graph()
    assert vt_load_automation.asset_selection.resolve(graph) == set(GATED_KEYS)
    assert vt_load_automation.default_status.value == "STOPPED"
    assert graph.get(VT_FILE_REPORTS_KEY).automation_condition is None  # the schedule exports
    assert {check.name for check in graph.get(VT_FILE_REPORTS_KEY).check_keys if graph.get(check).blocking} == set(BLOCKING)
