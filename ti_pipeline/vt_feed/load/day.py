"""Load one export day: check it is complete, stage it with the chosen loader, merge, verify.

The import policy (``values.ImportPolicy``, from ``TI_IMPORT_CLASSIFICATIONS``) is an argument of
the load: the merge leaves out every staged row whose final classification it does not admit, and
the accounting counts them as filtered ``classification_not_imported`` (by classification in the
figures ``not_imported.<X>``), so read = written + filtered + rejected on every loader.

A killed run leaves at most a staging table behind (re-created by the next run) and merged chunks
that re-apply identically, so re-running any day, at any point, ends in the same table.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa

from ti_pipeline.core import keys, schema, values
from ti_pipeline.core.accounting import Accounting, QuarantineRecord
from ti_pipeline.core.exports import (
    BROCCOLI_CLASSIFICATIONS_DATASET,
    VT_FILE_REPORTS_DATASET,
    DayExport,
    check_parts,
    require_export,
)
from ti_pipeline.core.failpoints import failpoint
from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.vt_feed.load.base import (
    EventHook,
    LoaderError,
    LoadSettings,
    Stager,
    StageRequest,
    retrying,
)
from ti_pipeline.vt_feed.load.import_into import ImportIntoStager
from ti_pipeline.vt_feed.load.lightning import LightningStager
from ti_pipeline.vt_feed.load.merge import OUTCOMES, MergePlan, key_ranges, merge_range
from ti_pipeline.vt_feed.load.sql import SqlStager

# Accounting names: why a staged report row was not written.
KEPT_OLDER = "newer_scan_already_stored"
# The upstream's production set, when the caller names no policy.
DEFAULT_POLICY = ImportPolicy(values.PRODUCTION_CLASSIFICATIONS)


@dataclass
class DayLoad:
    """What a day's load did: the balance of its report rows and the check figures."""

    accounting: Accounting
    reports: DayExport
    sidecar: DayExport
    staged: int
    missing_after_merge: int


def make_stager(name: str) -> Stager:
    return {"sql": SqlStager, "lightning": LightningStager, "import_into": ImportIntoStager}[name]()


def recreate(warehouse: Warehouse, day_yyyymmdd: str, *tables: sa.Table) -> None:
    """Drop every staging table of the day, of any loader (a killed earlier run may have left them
    half full), and create ``tables``."""
    drop(warehouse, *schema.vt_load_staging(day_yyyymmdd))
    with warehouse.engine.begin() as conn:
        for table in tables:
            table.create(conn)


def drop(warehouse: Warehouse, *tables: sa.Table) -> None:
    with warehouse.engine.begin() as conn:
        for table in tables:
            table.drop(conn, checkfirst=True)


def load_day(
    warehouse: Warehouse,
    store: ObjectStore,
    day: date | str,
    settings: LoadSettings,
    *,
    log: logging.Logger,
    quarantine: Callable[[Sequence[QuarantineRecord]], None],
    on_event: EventHook | None = None,
    policy: ImportPolicy = DEFAULT_POLICY,
) -> DayLoad:
    """Load one exported day. The caller holds the day's lock (``Warehouse.partition_lock``, taken by
    the asset for its whole materialization): two loads of a day would re-create each other's staging."""
    return _load_day(
        warehouse, store, keys.day(day), settings, log=log, quarantine=quarantine, on_event=on_event, policy=policy
    )


def _load_day(
    warehouse: Warehouse,
    store: ObjectStore,
    day: date,
    settings: LoadSettings,
    *,
    log: logging.Logger,
    quarantine: Callable[[Sequence[QuarantineRecord]], None],
    on_event: EventHook | None,
    policy: ImportPolicy,
) -> DayLoad:
    reports = require_export(store, VT_FILE_REPORTS_DATASET, day)
    sidecar = require_export(store, BROCCOLI_CLASSIFICATIONS_DATASET, day)
    check_parts(store, reports)
    check_parts(store, sidecar)
    stager = make_stager(settings.loader)
    day_yyyymmdd = reports.manifest.day.strftime("%Y%m%d")
    if stager.classifies:
        reports_table, sidecar_table = schema.vt_classified_staging(day_yyyymmdd), None
    else:
        reports_table, sidecar_table = schema.vt_load_staging(day_yyyymmdd)
    staging = [t for t in (reports_table, sidecar_table) if t is not None]
    recreate(warehouse, day_yyyymmdd, *staging)
    plan = MergePlan(reports_table, sidecar_table, warehouse.dialect, tuple(policy.classifications))
    acc = Accounting()
    started = time.monotonic()
    log.info(f"staging {len(reports.parts)} part(s) of {store.url_of(reports.prefix)} with the {stager.name} loader")
    staged_result = stager.stage(
        StageRequest(
            warehouse, store, reports, sidecar, reports_table, sidecar_table, settings, log, quarantine, on_event, plan.admitted
        )
    )
    staging_seconds = time.monotonic() - started
    acc.read = staged_result.read
    acc.rejected.update(staged_result.rejected)
    acc.figures.update(staged_result.figures)
    staged = warehouse.count(reports_table)
    # Rows the stager settled itself (new rows written straight into the target, or left out by the policy).
    unstaged = staged_result.unstaged
    shortfall = acc.read - acc.rejected_total - staged - unstaged
    if shortfall < 0:
        raise LoaderError(f"{reports_table.name} holds {staged} rows and {unstaged} were settled unstaged, but only {acc.read} were read")
    if shortfall:
        acc.reject(stager.shortfall_reason, shortfall)
        log.warning(f"{shortfall} report row(s) read but not staged: {stager.shortfall_reason}")
    acc.figures["staged_rows"] = staged
    if sidecar_table is not None:
        acc.figures["sidecar_rows"] = warehouse.count(sidecar_table)

    started = time.monotonic()
    outcomes = merge_staged(warehouse, plan, settings, log, acc, on_event)
    outcomes.update(staged_result.outcomes)
    merge_seconds = time.monotonic() - started
    acc.written = outcomes["inserted"] + outcomes["updated"] + outcomes["reapplied"]
    acc.filter(KEPT_OLDER, outcomes["kept_older"])
    not_imported = outcomes[values.FILTER_CLASSIFICATION_NOT_IMPORTED]
    acc.filter(values.FILTER_CLASSIFICATION_NOT_IMPORTED, not_imported)
    with warehouse.engine.connect() as conn:
        missing, token_rows = (int(value) for value in conn.execute(plan.verify_statement()).one())
    outcomes["token_rows"] += token_rows
    for name in (*OUTCOMES, "token_rows"):
        acc.figures[name] = outcomes[name]
    acc.figures.update({k: v for k, v in outcomes.items() if k.startswith(("classification.", "not_imported."))})
    drop(warehouse, *staging)
    acc.figures["staging_ms"] = round(staging_seconds * 1000)
    acc.figures["merge_ms"] = round(merge_seconds * 1000)
    log.info(
        f"{day}: read {acc.read:,}, inserted {outcomes['inserted']:,}, updated {outcomes['updated']:,}, "
        f"reapplied {outcomes['reapplied']:,}, kept older {outcomes['kept_older']:,}, "
        f"not imported {not_imported:,} (policy {','.join(plan.admitted) or 'none'}), rejected {acc.rejected_total:,} "
        f"(staging {staging_seconds:.1f}s, merge {merge_seconds:.1f}s)"
    )
    return DayLoad(acc, reports, sidecar, staged, missing)


def merge_staged(
    warehouse: Warehouse,
    plan: MergePlan,
    settings: LoadSettings,
    log: logging.Logger,
    acc: Accounting,
    on_event: EventHook | None,
):
    """Merge the staged rows chunk by chunk of keys; each chunk is one retried transaction."""
    totals: Counter[str] = Counter()
    with warehouse.engine.connect() as conn:
        ranges = list(key_ranges(conn, plan, settings.merge_chunk_rows))
    for index, (lo, hi) in enumerate(ranges):
        outcome: dict[str, Counter[str]] = {}

        def work(lo=lo, hi=hi, outcome=outcome) -> None:
            with warehouse.engine.begin() as conn:
                outcome["counts"] = merge_range(conn, plan, lo, hi)

        retrying(work, f"merge chunk {index}", acc.figures)
        failpoint("load.merge_chunk")
        totals.update(outcome["counts"])
        acc.figures["merge_chunks"] += 1
        merged = sum(totals[name] for name in (*OUTCOMES, values.FILTER_CLASSIFICATION_NOT_IMPORTED))
        log.info(f"merged key range {index + 1}/{len(ranges)}: {merged:,} staged rows so far")
        if on_event is not None:
            on_event("merged_chunk", index)
    return totals
