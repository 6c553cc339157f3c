"""Schedules: the nightly VT export of the day before yesterday."""

from datetime import UTC, datetime, timedelta

from dagster import RunRequest, ScheduleEvaluationContext, schedule

from ti_pipeline.jobs import vt_file_reports_job

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


schedules = [vt_file_reports_daily]
