"""Steps on Celery workers: the same assets, executed by ``dagster-celery`` workers.

The job below is what a deployment with workers runs (dagster.yaml variant and set-up in
docs/deployment.md); its broker comes from run config, e.g. ``redis://127.0.0.1:6379/0``.
"""

from dagster import AssetKey, define_asset_job
from dagster_celery import celery_executor

sage_dump_small_collections_on_celery = define_asset_job(
    "sage_dump_small_collections_on_celery",
    selection=[
        AssetKey(["sage_dump", "ioc_tokens"]),
        AssetKey(["sage_dump", "ioc_ips"]),
        AssetKey(["sage_dump", "file_extension_classification"]),
    ],
    executor_def=celery_executor,
    description="The small dump collections, each step executed by a Celery worker.",
)


def celery_job():
    """The resolved job, for ``reconstructable`` (workers rebuild it from this module)."""
    from ti_pipeline.definitions import defs

    return defs.resolve_job_def(sage_dump_small_collections_on_celery.name)
