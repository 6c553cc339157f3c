"""The ti_pipeline code location."""

from dagster import Definitions, multiprocess_executor

from ti_pipeline.assets import broccoli as broccoli_assets
from ti_pipeline.assets import sage_dump, vt_feed
from ti_pipeline.assets import submissions as submission_assets
from ti_pipeline.assets import threat_actors as threat_actor_assets
from ti_pipeline.assets import vt_load as vt_load_assets
from ti_pipeline.distributed import jobs as distributed_jobs
from ti_pipeline.jobs import jobs
from ti_pipeline.resources import (
    BroccoliResource,
    LoaderResource,
    MalpediaResource,
    ObjectStoreResource,
    PrivateKeyFileResource,
    WarehouseResource,
    from_env,
)
from ti_pipeline.schedules import schedules
from ti_pipeline.sensors import vt_parquet_landed
from ti_pipeline.submission_sensor import submissions_sensor


def build_resources() -> dict:
    """Resources from the environment, each falling back to its embedded default."""
    return {
        "warehouse": WarehouseResource(url=from_env("TI_WAREHOUSE_URL")),
        "sage_dump": ObjectStoreResource(setting="TI_SAGE_DUMP_URI", uri=from_env("TI_SAGE_DUMP_URI")),
        "vt_feed": ObjectStoreResource(setting="TI_VT_FEED_URI", uri=from_env("TI_VT_FEED_URI")),
        "export_store": ObjectStoreResource(setting="TI_EXPORT_URI", uri=from_env("TI_EXPORT_URI")),
        "broccoli": BroccoliResource(uri=from_env("TI_BROCCOLI_URI")),
        "loader": LoaderResource(loader=from_env("TI_LOADER"), tidb_password=from_env("TI_TIDB_PASSWORD")),
        "submissions_lake": ObjectStoreResource(setting="TI_SUBMISSIONS_URI", uri=from_env("TI_SUBMISSIONS_URI")),
        "malpedia": MalpediaResource(url=from_env("TI_MALPEDIA_URL"), token=from_env("TI_MALPEDIA_TOKEN")),
        "submissions_private_key": PrivateKeyFileResource(
            setting="TI_SUBMISSIONS_PRIVATE_KEY_FILE", path=from_env("TI_SUBMISSIONS_PRIVATE_KEY_FILE")
        ),
    }


defs = Definitions(
    assets=[*sage_dump.assets, *vt_feed.assets, *broccoli_assets.assets, *submission_assets.assets, *threat_actor_assets.assets, *vt_load_assets.assets],
    sensors=[submissions_sensor, vt_parquet_landed],
    jobs=[*jobs, *distributed_jobs],
    schedules=[*schedules, *threat_actor_assets.schedules],
    resources=build_resources(),
    executor=multiprocess_executor,
)
