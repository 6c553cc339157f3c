"""Broccoli's ML classification of a VT export day, as a sidecar beside the export (never rewriting it)."""

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ti_pipeline.core import keys
from ti_pipeline.core.exports import (
    BROCCOLI_CLASSIFICATIONS,
    BROCCOLI_CLASSIFICATIONS_DATASET,
    IncompleteExport,
    partition_prefix,
)
from ti_pipeline.defs.config import fields_of, options_from
from ti_pipeline.defs.metadata import (
    EXPORT_KINDS,
    OWNERS,
    accounting_metadata,
    export_asset_metadata,
    reconcile_check,
)
from ti_pipeline.defs.partitions import vt_days
from ti_pipeline.defs.policies import ASSET_RETRY_POLICY
from ti_pipeline.defs.resources import BroccoliResource, ObjectStoreResource, WarehouseResource
from ti_pipeline.defs.vt_feed.export import DOMAIN, VT_FILE_REPORTS_KEY
from ti_pipeline.vt_feed.broccoli.pipeline import UNKNOWN_LABELS_LISTED, DayOptions, DayResult, classify_day
from ti_pipeline.vt_feed.broccoli.selection import already_classified

BROCCOLI_CLASSIFICATIONS_KEY = AssetKey([DOMAIN, "broccoli_classifications"])
# The asset as logs and the quarantine's asset column name it.
ASSET_NAME = BROCCOLI_CLASSIFICATIONS_KEY.to_user_string()


class BroccoliConfig(fields_of(DayOptions)):
    concurrency: int = 500
    """Lookups in flight at once in this process (one aiohttp session)."""


def _metadata(result: DayResult, day: str, export_uri: str, broccoli_uri: str) -> dict[str, object]:
    extra: dict[str, object] = {
        "date": day,
        "lookups_per_second": MetadataValue.float(round(result.lookups_per_second, 1)),
        "lookup_seconds": MetadataValue.float(round(result.seconds, 3)),
        "broccoli_uri": broccoli_uri,
        "sidecar": MetadataValue.path(f"{export_uri.rstrip('/')}/{partition_prefix(BROCCOLI_CLASSIFICATIONS_DATASET, day)}"),
    }
    if result.unknown_labels:
        listed = result.unknown_labels.most_common(UNKNOWN_LABELS_LISTED)
        extra["unknown_labels"] = MetadataValue.md("\n".join(f"- `{label}`: {n:,}" for label, n in listed))
    return accounting_metadata(result.accounting, extra)


@asset(
    key=BROCCOLI_CLASSIFICATIONS_KEY,
    group_name=DOMAIN,
    partitions_def=vt_days,
    deps=[VT_FILE_REPORTS_KEY],
    retry_policy=ASSET_RETRY_POLICY,
    check_specs=[AssetCheckSpec("counts_reconcile", asset=BROCCOLI_CLASSIFICATIONS_KEY, description="read = written + filtered + rejected")],
    description=(
        "Broccoli's ML classification of every distinct SHA1 of the day's VT export that still needs one, "
        "looked up per SHA1 at TI_BROCCOLI_URI and written as a sidecar Parquet "
        "(sha1, classification, label, http_status, looked_up_at) beside the export, which is never rewritten."
    ),
    metadata={**export_asset_metadata(BROCCOLI_CLASSIFICATIONS), "dataset": BROCCOLI_CLASSIFICATIONS_DATASET},
    kinds=EXPORT_KINDS,
    owners=OWNERS,
)
def broccoli_classifications(
    context: AssetExecutionContext,
    config: BroccoliConfig,
    broccoli: BroccoliResource,
    export_store: ObjectStoreResource,
    warehouse: WarehouseResource,
):
    day = keys.day(context.partition_key).isoformat()
    store = export_store.get()
    wh = warehouse.get()
    client = broccoli.client(config.concurrency)
    options = options_from(config, DayOptions)

    def progress(done: int, total: int, seconds: float) -> None:
        context.log.info(f"{ASSET_NAME}[{day}]: {done:,}/{total:,} looked up ({done / max(seconds, 1e-9):,.0f}/s)")

    # One run at a time per day: two would look every SHA1 up twice and rewrite each other's sidecar.
    with warehouse.partition_lock(BROCCOLI_CLASSIFICATIONS_KEY, day, context.run.run_id):
        wh.clear_quarantine(ASSET_NAME, day)
        try:
            result = classify_day(
                store, client, day,
                already_classified=lambda sha1s: already_classified(wh.engine, sha1s),
                options=options,
                progress=progress,
            )
        except IncompleteExport as exc:
            raise Failure(f"{ASSET_NAME}[{day}]: {exc}") from exc
        wh.add_quarantine(ASSET_NAME, day, result.quarantine)
    metadata = _metadata(result, day, export_store.resolved_uri, broccoli.resolved_uri)
    if result.failed:
        raise Failure(description=f"{ASSET_NAME}[{day}]: {result.failure_message()}", metadata=metadata)
    yield MaterializeResult(metadata=metadata)
    yield reconcile_check(result.accounting)


assets = [broccoli_classifications]
