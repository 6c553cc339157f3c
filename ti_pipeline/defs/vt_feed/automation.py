"""How VT runs start: the jobs, the nightly export schedule, and the declarative automation that loads each
exported day once the export's blocking checks passed."""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetCheckKey,
    AssetsDefinition,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    RunRequest,
    ScheduleEvaluationContext,
    map_asset_specs,
    schedule,
)

from ti_pipeline.defs.jobs import HEAVY_TAG, JobSpec
from ti_pipeline.defs.vt_feed.broccoli import BROCCOLI_CLASSIFICATIONS_KEY
from ti_pipeline.defs.vt_feed.export import VT_FILE_REPORTS_KEY
from ti_pipeline.defs.vt_feed.load import VT_IOC_FILE_HASHES_KEY

# The freshness checks (freshness.py) run from their own sensor, not inside the runs they judge.
FRESHNESS_CHECK_NAME = "freshness_check"
VT_FILE_REPORTS = JobSpec(
    "vt_file_reports_job",
    AssetSelection.assets(VT_FILE_REPORTS_KEY) - AssetSelection.checks(AssetCheckKey(VT_FILE_REPORTS_KEY, FRESHNESS_CHECK_NAME)),
    "One VT feed day (or a range of days) to the vt_file_reports Parquet partition.",
    {HEAVY_TAG: "vt_decompress"},
)
# A day's Broccoli sidecar, then the load that needs it: what vt_load_automation requests for a day (as
# an asset selection), and the job to run them by hand or scaled out (defs/scale_out.py).
VT_LOAD = JobSpec(
    "vt_load_job",
    AssetSelection.assets(BROCCOLI_CLASSIFICATIONS_KEY, VT_IOC_FILE_HASHES_KEY)
    - AssetSelection.checks(AssetCheckKey(VT_IOC_FILE_HASHES_KEY, FRESHNESS_CHECK_NAME)),
    "One exported VT day: its Broccoli classification sidecar, then the merge into ioc_file_hashes.",
)
vt_file_reports_job = VT_FILE_REPORTS.build()
vt_load_job = VT_LOAD.build()

# The upstream CronJob's rule: at 02:00 UTC export D-2, so a day's late packages have landed.
VT_EXPORT_LAG_DAYS = 2


def vt_export_day(tick: datetime) -> str:
    """The partition a tick exports: its UTC date minus ``VT_EXPORT_LAG_DAYS``."""
    if tick.tzinfo is not None:
        tick = tick.astimezone(UTC)
    return (tick.date() - timedelta(days=VT_EXPORT_LAG_DAYS)).isoformat()


@schedule(
    name="vt_file_reports_daily",
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    job=vt_file_reports_job,
    description="Every day at 02:00 UTC, export the VT feed day of two days before (late packages have landed).",
)
def vt_file_reports_daily(context: ScheduleEvaluationContext) -> RunRequest:
    tick = context.scheduled_execution_time or datetime.now(UTC)
    day = vt_export_day(tick)
    return RunRequest(run_key=f"vt_file_reports:{day}", partition_key=day, tags={"ti_pipeline/vt_day": day})


# Days the automation loads by itself: the partitions of the last RECENT_DAYS days (the nightly D-2, a
# re-export of a recent day). Older days, the history, load through one asset backfill over the three VT
# assets (docs/runbook.md, "History backfill"): turning the sensor on never launches 2,200 days at once.
RECENT_DAYS = 7


def load_condition(recent_days: int) -> AutomationCondition:
    """Dagster's ``eager()`` over the last ``recent_days`` days instead of the latest partition (the nightly day
    is D-2, never the latest), for days whose export passed its blocking checks (packages_corrupt,
    counts_reconcile). The export does not materialize a day whose blocking check failed; the condition
    states the rule too, so a tick between a day's materialization and its check results waits for them.
    bench/history_drain.py measures it over the whole history."""
    return (
        AutomationCondition.in_latest_time_window(timedelta(days=recent_days))
        & (AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated()).since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
        & AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("vt_load_when_export_checks_passed")


VT_LOAD_CONDITION = load_condition(RECENT_DAYS)
GATED_KEYS = (BROCCOLI_CLASSIFICATIONS_KEY, VT_IOC_FILE_HASHES_KEY)


def with_load_condition(
    assets: Iterable[AssetsDefinition], condition: AutomationCondition = VT_LOAD_CONDITION
) -> list[AssetsDefinition]:
    """The Broccoli and load assets with ``condition`` (stated here, beside the sensor that evaluates it)."""
    return map_asset_specs(
        lambda spec: spec.replace_attributes(automation_condition=condition) if spec.key in GATED_KEYS else spec,
        assets,
    )


vt_load_automation = AutomationConditionSensorDefinition(
    "vt_load_automation",
    target=AssetSelection.assets(*GATED_KEYS),
    minimum_interval_seconds=60,
    description=(
        "Requests a day's Broccoli sidecar and load (one run) once vt_file_reports materialized the day and "
        f"its blocking checks passed, for the last {RECENT_DAYS} days; older days load through an asset backfill."
    ),
)
