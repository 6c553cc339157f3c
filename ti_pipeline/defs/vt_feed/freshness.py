"""Whether the nightly VT day arrived: a freshness check on day D-2 of the export and of the load.

The schedule exports D-2 at 02:00 UTC (``VT_EXPORT_LAG_DAYS``) and vt_load_automation loads it soon
after. Once a tick of ``TI_VT_FRESHNESS_DEADLINE_CRON`` (default ``0 6 * * *``, UTC) has passed, the check
``freshness_check`` of ``vt_feed/vt_file_reports`` and of ``vt_feed/ioc_file_hashes`` fails unless the
partition two days before that tick's date is materialized. Dagster's
``build_time_partition_freshness_checks`` expects the last *completed* day (D-1) by the deadline, which
this feed never has, so the check is this one, written the same way (the same metadata keys, so
``build_sensor_for_freshness_checks`` schedules it and the UI shows when it is due again).
"""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    DefaultSensorStatus,
    MetadataValue,
    build_sensor_for_freshness_checks,
    multi_asset_check,
)
from dagster._core.definitions.asset_checks.asset_check_factories.utils import retrieve_last_update_record
from dagster._utils.schedules import get_latest_completed_cron_tick, get_next_cron_tick, is_valid_cron_string

from ti_pipeline.core import settings
from ti_pipeline.defs.vt_feed.automation import FRESHNESS_CHECK_NAME, VT_EXPORT_LAG_DAYS
from ti_pipeline.defs.vt_feed.export import VT_FILE_REPORTS_KEY
from ti_pipeline.defs.vt_feed.load import VT_IOC_FILE_HASHES_KEY

FRESHNESS_TIMEZONE = "UTC"
DEADLINE_CRON = settings.text("TI_VT_FRESHNESS_DEADLINE_CRON") or "0 6 * * *"
if not is_valid_cron_string(DEADLINE_CRON):
    raise ValueError(f"TI_VT_FRESHNESS_DEADLINE_CRON is not a cron string: {DEADLINE_CRON!r}")
FRESH_ASSETS = (VT_FILE_REPORTS_KEY, VT_IOC_FILE_HASHES_KEY)
PARAMS = {"deadline_cron": DEADLINE_CRON, "timezone": FRESHNESS_TIMEZONE, "lag_days": VT_EXPORT_LAG_DAYS}


def now() -> datetime:
    return datetime.now(UTC)


def expected_day(at: datetime, deadline_cron: str = DEADLINE_CRON) -> tuple[datetime, str]:
    """The last deadline tick at ``at`` and the day (D-2 of the tick's date) due by it."""
    deadline = get_latest_completed_cron_tick(deadline_cron, at, FRESHNESS_TIMEZONE)
    return deadline, (deadline.date() - timedelta(days=VT_EXPORT_LAG_DAYS)).isoformat()


@multi_asset_check(
    specs=[
        AssetCheckSpec(
            FRESHNESS_CHECK_NAME,
            asset=key,
            description=f"day D-2 is materialized by each tick of `{DEADLINE_CRON}` (UTC; TI_VT_FRESHNESS_DEADLINE_CRON)",
            metadata={"dagster/freshness_params": MetadataValue.json(PARAMS)},
        )
        for key in FRESH_ASSETS
    ],
    can_subset=True,
    name="vt_feed_freshness",
    description="Whether day D-2 of the VT export and load is materialized by the freshness deadline.",
)
def vt_feed_freshness(context: AssetCheckExecutionContext) -> Iterable[AssetCheckResult]:
    at = now()
    deadline, day = expected_day(at)
    fresh_until = get_next_cron_tick(DEADLINE_CRON, at, FRESHNESS_TIMEZONE)
    for check_key in context.selected_asset_check_keys:
        record = retrieve_last_update_record(context.instance, check_key.asset_key, partition_key=day)
        metadata = {
            "dagster/freshness_params": MetadataValue.json(PARAMS),
            "dagster/latest_cron_tick_timestamp": MetadataValue.timestamp(deadline),
            "expected_partition": day,
        }
        if record is not None:
            metadata["dagster/fresh_until_timestamp"] = MetadataValue.timestamp(fresh_until)
        else:
            metadata["dagster/overdue_seconds"] = MetadataValue.float(round((at - deadline).total_seconds(), 1))
        yield AssetCheckResult(
            asset_key=check_key.asset_key,
            check_name=check_key.name,
            passed=record is not None,
            severity=AssetCheckSeverity.ERROR,
            description=(
                f"{check_key.asset_key.to_user_string()}[{day}] materialized" if record is not None
                else f"{check_key.asset_key.to_user_string()}[{day}] not materialized by {deadline.isoformat()}"
            ),
            metadata=metadata,
        )


freshness_checks = [vt_feed_freshness]
# Runs the check when it can be overdue (a tick passed since it last passed) or the asset changed
# since it failed. Stopped by default like the schedule and vt_load_automation: turn it on with them.
vt_feed_freshness_sensor = build_sensor_for_freshness_checks(
    freshness_checks=freshness_checks,
    name="vt_feed_freshness_sensor",
    minimum_interval_seconds=600,
    default_status=DefaultSensorStatus.STOPPED,
)
