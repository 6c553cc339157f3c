"""Broccoli's ML classification of a VT export day, as a sidecar beside the export (never rewriting it)."""

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ti_pipeline.core import keys
from ti_pipeline.core.exports import partition_prefix
from ti_pipeline.defs.metadata import accounting_metadata, reconcile_check
from ti_pipeline.defs.partitions import vt_days
from ti_pipeline.defs.resources import BroccoliResource, ObjectStoreResource, WarehouseResource
from ti_pipeline.vt_feed.broccoli import sidecar
from ti_pipeline.vt_feed.broccoli.pipeline import DayOptions, DayResult, classify_day
from ti_pipeline.vt_feed.broccoli.selection import already_classified

ASSET = "broccoli_classifications"
GROUP = "vt_feed"


class BroccoliConfig(Config):
    concurrency: int = 500
    """Lookups in flight at once in this process (one aiohttp session)."""
    refresh: bool = False
    """Look every SHA1 of the day up again, even those the warehouse or an earlier run already classified."""
    checkpoint_every: int = 20_000
    """Finished lookups saved per checkpoint part; a killed run redoes at most this many."""
    max_failed_lookups: int = 1_000
    """Stop taking new SHA1s after this many lookups failed every retry (the day then fails)."""
    rows_per_part: int = 1_000_000


def _metadata(result: DayResult, day: str, export_uri: str, broccoli_uri: str) -> dict[str, object]:
    extra: dict[str, object] = {
        "date": day,
        "lookups_per_second": MetadataValue.float(round(result.lookups_per_second, 1)),
        "lookup_seconds": MetadataValue.float(round(result.seconds, 3)),
        "broccoli_uri": broccoli_uri,
        "sidecar": MetadataValue.path(f"{export_uri.rstrip('/')}/{partition_prefix(ASSET, day)}"),
    }
    if result.unknown_labels:
        listed = result.unknown_labels.most_common(20)
        extra["unknown_labels"] = MetadataValue.md("\n".join(f"- `{label}`: {n:,}" for label, n in listed))
    return accounting_metadata(result.accounting, extra)


@asset(
    name=ASSET,
    group_name=GROUP,
    partitions_def=vt_days,
    deps=[AssetKey("vt_file_reports")],
    check_specs=[AssetCheckSpec("counts_reconcile", asset=ASSET, description="read = written + filtered + rejected")],
    description=(
        "Broccoli's ML classification of every distinct SHA1 of the day's VT export that still needs one, "
        "looked up per SHA1 at TI_BROCCOLI_URI and written as a sidecar Parquet "
        "(sha1, classification, label, http_status, looked_up_at) beside the export, which is never rewritten."
    ),
    metadata={"dataset": ASSET},
    kinds={"python", "parquet"},
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
    options = DayOptions(
        refresh=config.refresh,
        checkpoint_every=config.checkpoint_every,
        max_failed_lookups=config.max_failed_lookups,
        rows_per_part=config.rows_per_part,
    )

    def progress(done: int, total: int, seconds: float) -> None:
        context.log.info(f"{ASSET}[{day}]: {done:,}/{total:,} looked up ({done / max(seconds, 1e-9):,.0f}/s)")

    wh.clear_quarantine(ASSET, day)
    try:
        result = classify_day(
            store, client, day,
            already_classified=lambda sha1s: already_classified(wh.engine, sha1s),
            options=options,
            progress=progress,
        )
    except sidecar.IncompleteExport as exc:
        raise Failure(f"{ASSET}[{day}]: {exc}") from exc
    wh.add_quarantine(ASSET, day, result.quarantine)
    metadata = _metadata(result, day, export_store.resolved_uri, broccoli.resolved_uri)
    if result.failed:
        raise Failure(description=f"{ASSET}[{day}]: {result.failure_message()}", metadata=metadata)
    yield MaterializeResult(metadata=metadata)
    yield reconcile_check(result.accounting)


assets = [broccoli_classifications]
