"""The VT feed: the daily export to Parquet, its Broccoli sidecar, the load into ioc_file_hashes, and how
their runs start."""

from dagster import Definitions

from ti_pipeline.defs.vt_feed import automation, broccoli, export, load

defs = Definitions(
    assets=[*export.assets, *broccoli.assets, *load.assets],
    jobs=[automation.vt_file_reports_job, automation.vt_load_job],
    schedules=[automation.vt_file_reports_daily],
    sensors=[automation.vt_parquet_landed],
)
