"""Partitions of the target tables."""

from dagster import StaticPartitionsDefinition

from ti_pipeline.keys import SHARDS

dump_shards = StaticPartitionsDefinition(list(SHARDS))
