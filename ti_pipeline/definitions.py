"""The ti_pipeline code location."""

from dagster import Definitions, multiprocess_executor

from ti_pipeline.assets import sage_dump
from ti_pipeline.jobs import jobs
from ti_pipeline.resources import ObjectStoreResource, WarehouseResource, from_env


def build_resources() -> dict:
    """Resources from the environment, each falling back to its embedded default."""
    return {
        "warehouse": WarehouseResource(url=from_env("TI_WAREHOUSE_URL")),
        "sage_dump": ObjectStoreResource(setting="TI_SAGE_DUMP_URI", uri=from_env("TI_SAGE_DUMP_URI")),
    }


defs = Definitions(
    assets=[*sage_dump.assets],
    jobs=jobs,
    resources=build_resources(),
    executor=multiprocess_executor,
)
