"""``vt_parquet_landed``: start the Broccoli sidecar + load run for each VT day whose export completes."""

from dagster import RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from ti_pipeline.jobs import vt_load_job
from ti_pipeline.loaders.landing import Mark, list_landed, plan
from ti_pipeline.partitions import vt_days
from ti_pipeline.resources import ObjectStoreResource

MAX_REQUESTS_PER_TICK = 4


def _is_partition(day: str) -> bool:
    return vt_days.has_partition_key(day)


@sensor(
    name="vt_parquet_landed",
    job=vt_load_job,
    minimum_interval_seconds=120,
    description=(
        "Requests vt_load_job for each vt_file_reports day whose _SUCCESS manifest was written since the "
        f"last tick (at most {MAX_REQUESTS_PER_TICK} per tick); a re-export is a new manifest, hence a new run."
    ),
)
def vt_parquet_landed(context: SensorEvaluationContext, export_store: ObjectStoreResource):
    cursor = Mark.decode(context.cursor)
    requests, skipped, new_cursor = plan(list_landed(export_store.get()), cursor, MAX_REQUESTS_PER_TICK, _is_partition)
    for day in skipped:
        context.log.warning(f"{day.mark.name}: {day.day} is not a vt_days partition; ignored")
    if not requests:
        return SensorResult(
            skip_reason=SkipReason("no VT export completed since the last tick"),
            cursor=new_cursor.encode() if new_cursor else None,
        )
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=day.run_key,
                partition_key=day.day,
                tags={"ti_pipeline/export_generation": str(day.generation)},
            )
            for day in requests
        ],
        cursor=new_cursor.encode() if new_cursor else None,
    )


sensors = [vt_parquet_landed]
