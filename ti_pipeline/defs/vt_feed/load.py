"""Exported VT days into ``ioc_file_hashes``: stage with the configured loader, merge newest-scan-wins."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ti_pipeline.core import schema
from ti_pipeline.defs.metadata import (
    OWNERS,
    TABLE_KINDS,
    accounting_metadata,
    reconcile_check,
    table_asset_metadata,
)
from ti_pipeline.defs.partitions import vt_days
from ti_pipeline.defs.policies import ASSET_RETRY_POLICY, no_retry
from ti_pipeline.defs.resources import LoaderResource, ObjectStoreResource, WarehouseResource
from ti_pipeline.defs.vt_feed.broccoli import BROCCOLI_CLASSIFICATIONS_KEY
from ti_pipeline.defs.vt_feed.export import DOMAIN, VT_FILE_REPORTS_KEY
from ti_pipeline.vt_feed.load import IncompleteExport, LoaderError, load_day

VT_IOC_FILE_HASHES_KEY = AssetKey([DOMAIN, "ioc_file_hashes"])
# The asset as the quarantine's asset column names it.
ASSET_NAME = VT_IOC_FILE_HASHES_KEY.to_user_string()


class VtLoadConfig(Config):
    loader: str | None = None
    """sql, lightning or import_into for this run (default: the loader resource, then TI_LOADER)."""


@asset(
    key=VT_IOC_FILE_HASHES_KEY,
    group_name=DOMAIN,
    partitions_def=vt_days,
    deps=[VT_FILE_REPORTS_KEY, BROCCOLI_CLASSIFICATIONS_KEY],
    description=(
        "One exported VT day (vt_file_reports + its broccoli_classifications sidecar) merged into "
        "ioc_file_hashes: a row changes only for a newer scan_date, SHA256/SHA1/MD5 tokens outrank "
        "Broccoli's classification, and only classifications TI_IMPORT_CLASSIFICATIONS admits enter. "
        "Feeder 2 of 2 of this table; sage_dump/ioc_file_hashes (the 2020 dump baseline) is feeder 1."
    ),
    check_specs=[
        AssetCheckSpec("counts_reconcile", asset=VT_IOC_FILE_HASHES_KEY, description="read = written + filtered + rejected"),
        AssetCheckSpec("sha256s_present", asset=VT_IOC_FILE_HASHES_KEY, description="every sha256 the day kept is in the table"),
    ],
    pool="warehouse_writes",
    retry_policy=ASSET_RETRY_POLICY,
    metadata={**table_asset_metadata(schema.ioc_file_hashes), "feeders": "sage_dump/ioc_file_hashes, vt_feed/ioc_file_hashes"},
    kinds=TABLE_KINDS,
    owners=OWNERS,
)
def vt_ioc_file_hashes(
    context: AssetExecutionContext,
    config: VtLoadConfig,
    warehouse: WarehouseResource,
    export_store: ObjectStoreResource,
    loader: LoaderResource,
):
    day = context.partition_key
    try:
        policy = warehouse.import_policy()
    except ValueError as exc:
        raise no_retry(str(exc)) from exc
    wh = warehouse.get()
    settings = loader.load_settings(config.loader)
    # One load of a day at a time: two would re-create each other's staging tables.
    with warehouse.partition_lock(VT_IOC_FILE_HASHES_KEY, day, context.run.run_id):
        wh.clear_quarantine(ASSET_NAME, day)
        try:
            result = load_day(
                wh,
                export_store.get(),
                day,
                settings,
                log=context.log,
                quarantine=lambda records: wh.add_quarantine(ASSET_NAME, day, records),
                policy=policy,
            )
        except (IncompleteExport, LoaderError) as exc:
            raise Failure(str(exc)) from exc
    acc = result.accounting
    extra = {
        "day": day,
        "loader": settings.loader,
        "import_classifications": policy.text(),
        "export_generation": MetadataValue.int(result.reports.manifest_generation),
        "sidecar_generation": MetadataValue.int(result.sidecar.manifest_generation),
        "parts": MetadataValue.int(len(result.reports.parts)),
    }
    yield MaterializeResult(metadata=accounting_metadata(acc, extra))
    yield reconcile_check(acc)
    yield AssetCheckResult(
        check_name="sha256s_present",
        passed=result.missing_after_merge == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"staged": result.staged, "missing": result.missing_after_merge},
    )


assets = [vt_ioc_file_hashes]
