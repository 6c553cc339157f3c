"""The 2020-11-05 Sage MongoDB dump into the IOC tables (the baseline every feed updates)."""

from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetSpec,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)

from ti_pipeline.core import keys, schema
from ti_pipeline.core.accounting import Accounting
from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.core.quality import invalid_keys
from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.defs.config import fields_of, options_from
from ti_pipeline.defs.jobs import HEAVY_TAG, JobSpec
from ti_pipeline.defs.metadata import (
    OWNERS,
    TABLE_KINDS,
    Progress,
    accounting_metadata,
    reconcile_check,
    sample_table,
    table_asset_metadata,
)
from ti_pipeline.defs.partitions import dump_shards
from ti_pipeline.defs.policies import ASSET_RETRY_POLICY, no_retry
from ti_pipeline.defs.resources import ObjectStoreResource, WarehouseResource
from ti_pipeline.sage_dump import layout
from ti_pipeline.sage_dump.load import TABLES, DumpOptions, load_dump_file, rule_context

# The domain's one name: package, defs module, asset group and key prefix.
DOMAIN = "sage_dump"
IOC_FILE_HASHES_KEY = AssetKey([DOMAIN, "ioc_file_hashes"])
IOC_DOMAINS_KEY = AssetKey([DOMAIN, "ioc_domains"])
IOC_TOKENS_KEY = AssetKey([DOMAIN, "ioc_tokens"])
IOC_IPS_KEY = AssetKey([DOMAIN, "ioc_ips"])
FILE_EXTENSION_CLASSIFICATION_KEY = AssetKey([DOMAIN, "file_extension_classification"])


class SageDumpConfig(fields_of(DumpOptions)):
    """Run config of the Sage dump assets: ``DumpOptions`` (``shard_dir`` unset: ``TI_SAGE_SHARD_DIR``)."""


@dataclass
class CollectionLoad:
    """What one asset's load read: the accounting, and the files read and left unread."""

    files: list[layout.DumpFile]
    accounting: Accounting = field(default_factory=Accounting)

    def file_metadata(self, store: ObjectStore) -> dict[str, object]:
        ignored = [store.url_of(name) for f in self.files for name in f.ignored]
        return {
            "files_read": MetadataValue.text("\n".join(store.url_of(f.name) for f in self.files)),
            "files_ignored": MetadataValue.text("\n".join(ignored) if ignored else "none"),
        }


def dump_files(store: ObjectStore, shards: Iterable[str], collection: str, template: str | None) -> list[layout.DumpFile]:
    """The file of ``collection`` in each of ``shards`` that holds it; a layout error fails the step."""
    try:
        return [f for shard in shards if (f := layout.find_dump_file(store, shard, collection, template)) is not None]
    except layout.LayoutError as exc:
        raise no_retry(str(exc)) from None


def load_collection(
    context: AssetExecutionContext,
    store: ObjectStore,
    warehouse: Warehouse,
    config: SageDumpConfig,
    *,
    collection: str,
    shards: Iterable[str],
    asset_key: AssetKey,
    partition_key: str,
    policy: ImportPolicy,
) -> CollectionLoad:
    """Stream the file of ``collection`` in each of ``shards`` into the warehouse; rejects go to the
    quarantine under the asset's full key (``sage_dump/ioc_file_hashes``) and ``partition_key``."""
    shards = list(shards)
    options = options_from(config, DumpOptions)
    template = options.shard_dir
    files = dump_files(store, shards, collection, template)
    if not files:
        looked = ", ".join(folder for shard in shards for folder in layout.looked_in(shard, template))
        raise no_retry(
            f"no {collection}.bson(.gz) under {store.uri} for shard(s) {', '.join(shards)} (looked in {looked})"
        )
    asset_name = asset_key.to_user_string()
    warehouse.clear_quarantine(asset_name, partition_key)
    load = CollectionLoad(files=files)
    total = load.accounting
    ctx = rule_context(policy)
    progress = Progress(context.log, f"{asset_name}[{partition_key}]")
    for dump_file in files:
        for ignored in dump_file.ignored:
            context.log.warning(
                f"both {store.url_of(dump_file.name)} and {store.url_of(ignored)} exist: reading the first, ignoring the second"
            )
        context.log.info(f"reading {store.url_of(dump_file.name)}")
        done = total.read, total.figures["bytes_read"]
        acc = load_dump_file(
            store, dump_file.name, collection, warehouse,
            quarantine_key=(asset_name, partition_key),
            ctx=ctx,
            options=options,
            on_progress=lambda a, n, done=done: progress.update(done[0] + a.read, done[1] + n),
        )
        total.merge(acc)
    progress.update(total.read, total.figures["bytes_read"], force=True)
    total.figures["files"] = len(files)
    return load


def import_policy(warehouse: WarehouseResource) -> ImportPolicy:
    """The policy in force (``TI_IMPORT_CLASSIFICATIONS``); a name that is not a classification fails the step."""
    try:
        return warehouse.import_policy()
    except ValueError as exc:
        raise no_retry(str(exc)) from None


SAMPLE_COLUMNS = {
    "ioc_file_hashes": ("sha256", "classification", "positives", "total", "scan_date", "detection_names"),
    "ioc_domains": ("domain", "classification", "source", "positives", "detected_urls", "last_seen"),
}


def sample_rows(warehouse: Warehouse, table_name: str, limit: int = 5) -> list[dict]:
    """A few dump rows of the table, for a look at what was written."""
    table = TABLES[table_name]
    query = (
        sa.select(*(table.c[c] for c in SAMPLE_COLUMNS[table_name]))
        .where(table.c.source == "SAGE_DUMP")
        .order_by(table.primary_key.columns.values()[0])
        .limit(limit)
    )
    with warehouse.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def key_check(warehouse: Warehouse, table_name: str, asset_key: AssetKey) -> AssetCheckResult:
    count, examples = invalid_keys(warehouse, TABLES[table_name])
    return AssetCheckResult(
        check_name="valid_keys",
        asset_key=asset_key,
        passed=count == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"invalid_keys": count, "examples": ", ".join(map(str, examples))},
    )


def _checks(key: AssetKey) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec("counts_reconcile", asset=key, description="read = written + filtered + rejected"),
        AssetCheckSpec("valid_keys", asset=key, description="every key in the table is a well-formed value"),
    ]


def _shard_asset(key: AssetKey, collection: str, description: str):
    name = key.path[-1]

    @asset(
        key=key,
        group_name=DOMAIN,
        partitions_def=dump_shards,
        description=description,
        check_specs=_checks(key),
        pool="warehouse_writes",
        retry_policy=ASSET_RETRY_POLICY,
        tags={"ti_pipeline/heavy": "bson_decode"},
        metadata={**table_asset_metadata(TABLES[name]), "source_collection": collection,
                  **({"feeders": "sage_dump/ioc_file_hashes, vt_feed/ioc_file_hashes"} if key == IOC_FILE_HASHES_KEY else {})},
        kinds=TABLE_KINDS,
        owners=OWNERS,
    )
    def _asset(
        context: AssetExecutionContext,
        config: SageDumpConfig,
        warehouse: WarehouseResource,
        sage_dump: ObjectStoreResource,
    ):
        shard = keys.shard(context.partition_key)
        store, policy = sage_dump.get(), import_policy(warehouse)
        # One run at a time per shard: two would clear and refill the same quarantine.
        with warehouse.partition_lock(key, shard, context.run.run_id) as wh:
            load = load_collection(
                context, store, wh, config,
                collection=collection, shards=[shard], asset_key=key, partition_key=shard, policy=policy,
            )
        extra = {"shard": shard, **load.file_metadata(store),
                 "sample_rows": sample_table(sample_rows(wh, name), TABLES[name])}
        if collection == "file_rep":
            extra["import_classifications"] = MetadataValue.text(policy.text())
        yield MaterializeResult(asset_key=key, metadata=accounting_metadata(load.accounting, extra))
        yield reconcile_check(load.accounting, asset_key=key)
        yield key_check(wh, name, key)

    return _asset


ioc_file_hashes = _shard_asset(
    IOC_FILE_HASHES_KEY,
    "file_rep",
    "File-hash reputation from the dump's file_rep (VT report kept when response_code is 1). "
    "The table's other feeder is vt_feed/ioc_file_hashes (the daily VT load); the newest scan_date wins.",
)
ioc_domains = _shard_asset(
    IOC_DOMAINS_KEY,
    "domain_classification",
    "Domain reputation from domain_classification: unknown skipped, indifferent kept as AV_DETECTED only "
    "with a detected URL. DOMAIN tokens (sage_dump/ioc_tokens) overlay it and are never overwritten.",
)


@multi_asset(
    specs=[
        AssetSpec(
            IOC_TOKENS_KEY,
            group_name=DOMAIN,
            description="Curated tokens (TOKENS, from every shard that holds it). DOMAIN tokens also overlay ioc_domains.",
            metadata=table_asset_metadata(schema.ioc_tokens),
            kinds=TABLE_KINDS,
            owners=OWNERS,
        ),
        AssetSpec(
            IOC_IPS_KEY,
            group_name=DOMAIN,
            description="IP reputation from IPv4 tokens (sinkholes are not imported: rule team decision).",
            metadata=table_asset_metadata(schema.ioc_ips),
            kinds=TABLE_KINDS,
            owners=OWNERS,
        ),
    ],
    check_specs=_checks(IOC_TOKENS_KEY) + _checks(IOC_IPS_KEY)[1:],
    pool="warehouse_writes",
    retry_policy=ASSET_RETRY_POLICY,
)
def ioc_tokens(
    context: AssetExecutionContext, config: SageDumpConfig, warehouse: WarehouseResource, sage_dump: ObjectStoreResource
):
    wh, store = warehouse.get(), sage_dump.get()
    load = load_collection(
        context, store, wh, config, collection="TOKENS", shards=keys.SHARDS, asset_key=IOC_TOKENS_KEY,
        partition_key="all", policy=import_policy(warehouse),
    )
    files = load.file_metadata(store)
    meta = accounting_metadata(load.accounting, files)
    ip_count = wh.count(schema.ioc_ips, schema.ioc_ips.c.source == "TOKENS")
    yield MaterializeResult(asset_key=IOC_TOKENS_KEY, metadata=meta)
    yield MaterializeResult(asset_key=IOC_IPS_KEY, metadata={"dagster/row_count": ip_count, "from_tokens": ip_count, **files})
    yield reconcile_check(load.accounting, asset_key=IOC_TOKENS_KEY)
    yield key_check(wh, "ioc_tokens", IOC_TOKENS_KEY)
    yield key_check(wh, "ioc_ips", IOC_IPS_KEY)


@asset(
    key=FILE_EXTENSION_CLASSIFICATION_KEY,
    group_name=DOMAIN,
    description="Extension types for double-extension detection (FILE_EXTENSION_CLASSIFICATION, from every shard that holds it).",
    check_specs=[_checks(FILE_EXTENSION_CLASSIFICATION_KEY)[0]],
    pool="warehouse_writes",
    retry_policy=ASSET_RETRY_POLICY,
    metadata=table_asset_metadata(schema.file_extension_classification),
    kinds=TABLE_KINDS,
    owners=OWNERS,
)
def file_extension_classification(
    context: AssetExecutionContext, config: SageDumpConfig, warehouse: WarehouseResource, sage_dump: ObjectStoreResource
):
    store = sage_dump.get()
    load = load_collection(
        context, store, warehouse.get(), config,
        collection="FILE_EXTENSION_CLASSIFICATION", shards=keys.SHARDS,
        asset_key=FILE_EXTENSION_CLASSIFICATION_KEY, partition_key="all", policy=import_policy(warehouse),
    )
    yield MaterializeResult(metadata=accounting_metadata(load.accounting, load.file_metadata(store)))
    yield reconcile_check(load.accounting)


assets = [ioc_file_hashes, ioc_domains, ioc_tokens, file_extension_classification]

SAGE_DUMP_SHARDS = JobSpec(
    "sage_dump_shards_job",
    AssetSelection.assets(IOC_FILE_HASHES_KEY, IOC_DOMAINS_KEY),
    "The shard-partitioned dump collections (file_rep, domain_classification) for one shard.",
    {HEAVY_TAG: "bson_decode"},
)
SAGE_DUMP_SMALL_COLLECTIONS = JobSpec(
    "sage_dump_small_collections_job",
    AssetSelection.assets(IOC_TOKENS_KEY, IOC_IPS_KEY, FILE_EXTENSION_CLASSIFICATION_KEY),
    "TOKENS (tokens, IPs, domain overlay) and FILE_EXTENSION_CLASSIFICATION.",
)
sage_dump_shards_job = SAGE_DUMP_SHARDS.build()
sage_dump_small_collections_job = SAGE_DUMP_SMALL_COLLECTIONS.build()

defs = Definitions(assets=assets, jobs=[sage_dump_shards_job, sage_dump_small_collections_job])
