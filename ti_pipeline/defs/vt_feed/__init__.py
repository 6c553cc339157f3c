"""The VT feed: the daily export to Parquet, its Broccoli sidecar, the load into ioc_file_hashes, and how
their runs start."""

from dagster import Definitions

from ti_pipeline.defs.vt_feed import automation, broccoli, export, freshness, load

defs = Definitions(
    assets=[*export.assets, *automation.with_load_condition([*broccoli.assets, *load.assets])],
    asset_checks=freshness.freshness_checks,
    jobs=[automation.vt_file_reports_job, automation.vt_load_job],
    schedules=[automation.vt_file_reports_daily],
    sensors=[automation.vt_load_automation, freshness.vt_feed_freshness_sensor],
)
