"""Threat-actor context: the incremental Malpedia sync and the MITRE ATT&CK enrichment of actors."""

import asyncio

import sqlalchemy as sa
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetSpec,
    Config,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
    multi_asset,
)

from ti_pipeline.core import schema
from ti_pipeline.defs.jobs import JobSpec
from ti_pipeline.defs.metadata import (
    OWNERS,
    TABLE_KINDS,
    accounting_metadata,
    reconcile_check,
    table_asset_metadata,
)
from ti_pipeline.defs.policies import ASSET_RETRY_POLICY
from ti_pipeline.defs.resources import MalpediaResource, WarehouseResource
from ti_pipeline.threat_actors.attack import AttackCatalog
from ti_pipeline.threat_actors.client import MalpediaError
from ti_pipeline.threat_actors.enrich import enrich_actors
from ti_pipeline.threat_actors.sync import SyncReport, TableSync, sync_malpedia

# The domain's one name: package, defs module, asset group and key prefix.
DOMAIN = "threat_actors"
THREAT_ACTORS_KEY = AssetKey([DOMAIN, "threat_actors"])
MALWARE_FAMILIES_KEY = AssetKey([DOMAIN, "malware_families"])
ACTOR_TECHNIQUES_KEY = AssetKey([DOMAIN, "actor_techniques"])
NAMES_SHOWN = 100


class MalpediaSyncConfig(Config):
    force: bool = False
    """Fetch and compare everything even when Malpedia's version has not moved."""


class ActorTechniquesConfig(Config):
    recompute_all: bool = False
    """Match every actor again, not only those whose content changed since their last enrichment."""


def _names(names: list[str]) -> MetadataValue:
    shown = ", ".join(names[:NAMES_SHOWN])
    more = f" … and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return MetadataValue.text(shown + more if names else "-")


def _summary(table: TableSync) -> str:
    c = table.changes
    return (
        f"{len(c.new)} new, {len(c.updated)} updated, {len(c.unchanged)} unchanged, "
        f"{len(c.removed)} removed, {len(table.errors)} errors"
    )


def table_metadata(report: SyncReport, table: TableSync) -> dict[str, object]:
    changes = table.changes
    extra = {
        "malpedia_version": report.version,
        "previous_version": report.previous_version or "-",
        "version_unchanged": report.version_unchanged,
        "total": table.total,
        "new": len(changes.new),
        "updated": len(changes.updated),
        "unchanged": len(changes.unchanged),
        "removed": len(changes.removed),
        "errors": len(table.errors),
        "new_names": _names(table.named(changes.new)),
        "updated_names": _names(table.named(changes.updated)),
        "removed_names": _names(table.named(changes.removed)),
        "requests": report.requests,
        "retries": report.retries,
        "sync_seconds": MetadataValue.float(round(report.seconds, 3)),
        "dagster/row_count": table.total,
    }
    return accounting_metadata(table.accounting, extra)


@multi_asset(
    specs=[
        AssetSpec(
            THREAT_ACTORS_KEY,
            group_name=DOMAIN,
            description="Malpedia threat actors; vanished actors are marked removed, never deleted.",
            metadata=table_asset_metadata(schema.threat_actors),
            kinds=TABLE_KINDS,
            owners=OWNERS,
        ),
        AssetSpec(
            MALWARE_FAMILIES_KEY,
            group_name=DOMAIN,
            description="Malpedia malware families (names, attribution, references).",
            metadata=table_asset_metadata(schema.malware_families),
            kinds=TABLE_KINDS,
            owners=OWNERS,
        ),
    ],
    check_specs=[
        AssetCheckSpec("counts_reconcile", asset=THREAT_ACTORS_KEY, description="read = written + filtered + rejected"),
        AssetCheckSpec("counts_reconcile", asset=MALWARE_FAMILIES_KEY, description="read = written + filtered + rejected"),
    ],
    name="malpedia_sync",
    pool="warehouse_writes",
    retry_policy=ASSET_RETRY_POLICY,
)
def malpedia_sync(
    context: AssetExecutionContext,
    config: MalpediaSyncConfig,
    warehouse: WarehouseResource,
    malpedia: MalpediaResource,
):
    """Ask Malpedia's version; when it moved, fetch actors and families and write what changed."""
    wh = warehouse.get()

    async def run() -> SyncReport:
        async with malpedia.client(wh) as api:  # the budget every run on this warehouse shares
            return await sync_malpedia(api, wh, force=config.force, concurrency=malpedia.concurrency)

    try:
        report = asyncio.run(run())
    except MalpediaError as exc:
        raise Failure(f"Malpedia sync failed: {exc}") from None
    for key, table in ((THREAT_ACTORS_KEY, report.actors), (MALWARE_FAMILIES_KEY, report.families)):
        wh.clear_quarantine(key.to_user_string(), "all")
        wh.add_quarantine(key.to_user_string(), "all", table.errors)
    if report.version_unchanged:
        context.log.info(f"Malpedia version {report.version} already synced: nothing fetched")
    else:
        context.log.info(
            f"Malpedia {report.previous_version} -> {report.version}: actors {_summary(report.actors)}; "
            f"families {_summary(report.families)}; {report.requests} requests, {report.retries} retries"
        )
    yield MaterializeResult(asset_key=THREAT_ACTORS_KEY, metadata=table_metadata(report, report.actors))
    yield MaterializeResult(asset_key=MALWARE_FAMILIES_KEY, metadata=table_metadata(report, report.families))
    yield reconcile_check(report.actors.accounting, asset_key=THREAT_ACTORS_KEY)
    yield reconcile_check(report.families.accounting, asset_key=MALWARE_FAMILIES_KEY)


@asset(
    key=ACTOR_TECHNIQUES_KEY,
    deps=[THREAT_ACTORS_KEY],
    group_name=DOMAIN,
    description="MITRE ATT&CK techniques per actor (shipped ATT&CK data), re-matched only for changed actors.",
    check_specs=[AssetCheckSpec("counts_reconcile", asset=ACTOR_TECHNIQUES_KEY, description="read = written + filtered + rejected")],
    pool="warehouse_writes",
    retry_policy=ASSET_RETRY_POLICY,
    metadata=table_asset_metadata(schema.actor_techniques),
    kinds=TABLE_KINDS,
    owners=OWNERS,
)
def actor_techniques(context: AssetExecutionContext, config: ActorTechniquesConfig, warehouse: WarehouseResource):
    wh = warehouse.get()
    if config.recompute_all:
        with wh.engine.begin() as conn:
            conn.execute(schema.threat_actors.update().values(enriched_with=sa.null()))
    catalog = AttackCatalog.from_galaxy()
    report = enrich_actors(wh, catalog)
    context.log.info(f"ATT&CK {catalog.version}: {len(report.enriched)} actors enriched, {len(report.not_mapped)} not mapped")
    extra = {
        "attack_data": catalog.version,
        "actors_enriched": len(report.enriched),
        "actors_not_mapped": len(report.not_mapped),
        "actors_with_techniques": report.actors_with_techniques,
        "match_methods": MetadataValue.json(report.methods),
        "enriched_names": _names(report.enriched),
        "dagster/row_count": wh.count(schema.actor_techniques),
    }
    yield MaterializeResult(metadata=accounting_metadata(report.accounting, extra))
    yield reconcile_check(report.accounting)


assets = [malpedia_sync, actor_techniques]

THREAT_ACTORS_SPEC = JobSpec(
    "threat_actors_job",
    AssetSelection.groups(DOMAIN),
    "Malpedia sync (one version request when nothing changed), then ATT&CK techniques of changed actors.",
)
threat_actors_job = THREAT_ACTORS_SPEC.build()

# Daily and cheap: when Malpedia has not published a new version the run makes one request.
malpedia_daily = ScheduleDefinition(
    name="malpedia_daily",
    job=threat_actors_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    description="Every day at 03:00 UTC: sync Malpedia (one request when unchanged) and enrich changed actors.",
)
defs = Definitions(assets=assets, jobs=[threat_actors_job], schedules=[malpedia_daily])
