"""Encrypted per-organisation IOC submissions: the submissions/customer_ioc asset and the sensor that polls
the lake."""

from dagster import Definitions

from ti_pipeline.defs.submissions.assets import customer_ioc
from ti_pipeline.defs.submissions.sensors import submissions_sensor

defs = Definitions(assets=[customer_ioc], sensors=[submissions_sensor])
