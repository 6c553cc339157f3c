"""Partitions of the target tables."""

from dagster import DailyPartitionsDefinition, StaticPartitionsDefinition

from ti_pipeline.core.keys import SHARDS

dump_shards = StaticPartitionsDefinition(list(SHARDS))

# The VT feed by UTC day since the feed began; every VT-derived asset (export, Broccoli sidecar,
# load) uses this one definition so their partitions align.
vt_days = DailyPartitionsDefinition(start_date="2020-11-01", timezone="UTC")
