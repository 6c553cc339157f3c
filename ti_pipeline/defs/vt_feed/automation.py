"""How VT runs start: the jobs, the nightly export schedule, and the sensor that loads each exported day."""

from datetime import UTC, datetime, timedelta

from dagster import (
    AssetCheckKey,
    AssetSelection,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from ti_pipeline.defs.jobs import HEAVY_TAG, JobSpec
from ti_pipeline.defs.partitions import vt_days
from ti_pipeline.defs.resources import ObjectStoreResource
from ti_pipeline.defs.vt_feed.broccoli import BROCCOLI_CLASSIFICATIONS_KEY
from ti_pipeline.defs.vt_feed.export import VT_FILE_REPORTS_KEY
from ti_pipeline.defs.vt_feed.load import VT_IOC_FILE_HASHES_KEY
from ti_pipeline.vt_feed.load.landing import Mark, list_landed, plan

# The freshness checks (freshness.py) run from their own sensor, not inside the runs they judge.
FRESHNESS_CHECK_NAME = "freshness_check"
VT_FILE_REPORTS = JobSpec(
    "vt_file_reports_job",
    AssetSelection.assets(VT_FILE_REPORTS_KEY) - AssetSelection.checks(AssetCheckKey(VT_FILE_REPORTS_KEY, FRESHNESS_CHECK_NAME)),
    "One VT feed day (or a range of days) to the vt_file_reports Parquet partition.",
    {HEAVY_TAG: "vt_decompress"},
)
# What the vt_parquet_landed sensor starts for a day: the Broccoli sidecar, then the load that needs it.
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

MAX_REQUESTS_PER_TICK = 4


def _is_partition(day: str) -> bool:
    return vt_days.has_partition_key(day)


@sensor(
    name="vt_parquet_landed",
    job=vt_load_job,
    minimum_interval_seconds=120,
    description=(
        "Requests vt_load_job for each vt_file_reports day whose _SUCCESS manifest was written since the "
        f"last tick (at most {MAX_REQUESTS_PER_TICK} per tick); a re-export is a new manifest, hence a new run."
    ),
)
def vt_parquet_landed(context: SensorEvaluationContext, export_store: ObjectStoreResource):
    cursor = Mark.decode(context.cursor)
    requests, skipped, new_cursor = plan(list_landed(export_store.get()), cursor, MAX_REQUESTS_PER_TICK, _is_partition)
    for day in skipped:
        context.log.warning(f"{day.mark.name}: {day.day} is not a vt_days partition; ignored")
    if not requests:
        return SensorResult(
            skip_reason=SkipReason("no VT export completed since the last tick"),
            cursor=new_cursor.encode() if new_cursor else None,
        )
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=day.run_key,
                partition_key=day.day,
                tags={"ti_pipeline/export_generation": str(day.generation)},
            )
            for day in requests
        ],
        cursor=new_cursor.encode() if new_cursor else None,
    )
