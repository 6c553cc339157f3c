"""The nightly VT export: 02:00 UTC, the partition of two days before."""

from datetime import UTC, datetime, timedelta, timezone

from dagster import AssetKey, DagsterInstance, RunRequest, build_schedule_context

from ti_pipeline.definitions import defs
from ti_pipeline.defs.vt_feed.automation import vt_export_day, vt_file_reports_daily


def test_schedule_runs_at_two_utc_on_the_vt_job():
    schedule = defs.resolve_schedule_def("vt_file_reports_daily")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 2 * * *", "UTC")
    assert schedule.job_name == "vt_file_reports_job"
    job = defs.resolve_job_def("vt_file_reports_job")
    assert job.tags["ti_pipeline/heavy"] == "vt_decompress"
    assert set(job.asset_layer.executable_asset_keys) == {AssetKey(["vt_feed", "vt_file_reports"])}


def test_tick_requests_the_partition_of_two_days_before():
    with DagsterInstance.ephemeral() as instance:
        context = build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
        )
        request = vt_file_reports_daily(context)
    assert isinstance(request, RunRequest)
    assert (request.partition_key, request.run_key) == ("2026-11-20", "vt_file_reports:2026-11-20")


def test_the_day_is_taken_in_utc_across_month_ends_and_offsets():
    assert vt_export_day(datetime(2021, 3, 1, 2, 0, tzinfo=UTC)) == "2021-02-27"
    # 2020-11-03 01:00 in UTC+03:00 is 2020-11-02 22:00 UTC.
    assert vt_export_day(datetime(2020, 11, 3, 1, 0, tzinfo=timezone(timedelta(hours=3)))) == "2020-10-31"
