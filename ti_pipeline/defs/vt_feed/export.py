"""The VirusTotal feed, one UTC day of packages → the deduplicated ``vt_file_reports`` Parquet partition."""

import traceback
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    BackfillPolicy,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from ti_pipeline.core.accounting import Accounting
from ti_pipeline.core.exports import VT_FILE_REPORTS
from ti_pipeline.defs.config import fields_of, options_from
from ti_pipeline.defs.metadata import (
    EXPORT_KINDS,
    OWNERS,
    Progress,
    accounting_metadata,
    bar_chart,
    export_asset_metadata,
    reconcile_check,
    sample_table,
)
from ti_pipeline.defs.partitions import vt_days
from ti_pipeline.defs.policies import ASSET_RETRY_POLICY
from ti_pipeline.defs.resources import ObjectStoreResource, WarehouseResource
from ti_pipeline.vt_feed.export import DaySummary, ExportOptions, PackagePool, export_day
from ti_pipeline.vt_feed.package import PackageResult

# The domain's one name: package, defs module, asset group and key prefix (of broccoli.py and load.py too).
DOMAIN = "vt_feed"
VT_FILE_REPORTS_KEY = AssetKey([DOMAIN, "vt_file_reports"])
# The asset as logs and the quarantine's asset column name it.
ASSET_NAME = VT_FILE_REPORTS_KEY.to_user_string()
HEAVY_TAG = {"ti_pipeline/heavy": "vt_decompress"}
# Partitions per backfill run: ~2,200 days of history backfill in tens of runs, each reusing one
# process pool across its days.
MAX_PARTITIONS_PER_RUN = 60


class VtExportConfig(fields_of(ExportOptions)):
    max_corrupt_share: float = 0.05
    """Share of a day's packages that may be corrupt before the packages_corrupt check fails (below it, it warns)."""


def corrupt_check(acc: Accounting, summaries: list[DaySummary], max_share: float) -> AssetCheckResult:
    """Passes with no corrupt package; warns below ``max_share`` of the packages found, fails above."""
    corrupt = acc.figures["packages_corrupt"]
    found = acc.figures["packages_found"]
    share = corrupt / found if found else 0.0
    names = [f"{name}: {reason}" for s in summaries for name, reason in sorted(s.corrupt.items())]
    return AssetCheckResult(
        check_name="packages_corrupt",
        passed=corrupt == 0,
        severity=AssetCheckSeverity.WARN if share <= max_share else AssetCheckSeverity.ERROR,
        metadata={
            "packages_corrupt": corrupt,
            "packages_found": found,
            "corrupt_share": MetadataValue.float(round(share, 6)),
            "max_corrupt_share": MetadataValue.float(max_share),
            "corrupt_packages": MetadataValue.md("\n".join(f"- `{n}`" for n in names[:100]) or "none"),
        },
    )


def _days_table(summaries: list[DaySummary]) -> str:
    header = "| day | packages found | missing | corrupt | read | written | filtered | rejected | parts |\n"
    header += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    rows = []
    for s in summaries:
        a, f = s.accounting, s.figures
        rows.append(
            f"| {s.day} | {f['packages_found']:,} | {f['packages_missing']:,} | {f['packages_corrupt']:,} | "
            f"{a.read:,} | {a.written:,} | {a.filtered_total:,} | {a.rejected_total:,} | {len(s.parts)} |"
        )
    return header + "\n".join(rows)


def _not_read(summaries: list[DaySummary], limit: int = 100) -> str:
    """The objects of the days' folders that are not packages (``.partial``, ``.tmp``, ...), by name."""
    names = [name for s in summaries for name in s.objects_not_read]
    listed = "\n".join(f"- `{name}`" for name in names[:limit])
    more = f"\n- ... and {len(names) - limit:,} more" if len(names) > limit else ""
    return (listed + more) or "none"


def _export_one_day(context, feed, export, wh, day: str, pool: PackagePool, options: ExportOptions) -> DaySummary:
    wh.clear_quarantine(ASSET_NAME, day)
    progress = Progress(context.log, f"{ASSET_NAME}[{day}]")
    done = Accounting()

    def on_package(result: PackageResult) -> None:
        done.merge(result.accounting)
        done.figures["bytes"] += result.compressed_bytes
        progress.update(done.read, done.figures["bytes"])

    summary = export_day(
        feed,
        export,
        day,
        pool,
        options,
        on_quarantine=lambda records: wh.add_quarantine(ASSET_NAME, day, records),
        on_package=on_package,
    )
    if summary.objects_not_read:
        context.log.warning(
            f"{ASSET_NAME}[{day}]: {len(summary.objects_not_read)} object(s) whose names are not "
            f"{{YYYYMMDD}}T{{HHMM}} packages were not read: {', '.join(summary.objects_not_read[:20])}"
        )
    context.log.info(f"{ASSET_NAME}[{day}]: {summary.accounting.as_dict()}")
    return summary


def _run_partitions(days: list[str]) -> str:
    return ", ".join(days) if len(days) <= 3 else f"{days[0]} .. {days[-1]} ({len(days)} days)"


def _blocking_failures(context, results: list[AssetCheckResult]) -> list[AssetCheckResult]:
    """The selected blocking checks that failed at ERROR: Dagster's rule for "do not run downstream"."""
    return [
        r for r in results
        if not r.passed and r.severity == AssetCheckSeverity.ERROR
        and (key := AssetCheckKey(VT_FILE_REPORTS_KEY, r.check_name)) in context.selected_asset_check_keys
        and context.assets_def.get_spec_for_check_key(key).blocking
    ]


def _day_events(context, export, feed, summary: DaySummary, days: list[str], max_corrupt_share: float):
    """One finished day: its materialization (its own accounting, row count, chart and sample rows), then
    its check evaluations, each for that partition. Yielded, not ``log_event``-ed, so each is stored as
    the day finishes even if a later day fails the step. A day whose blocking check failed gets its
    evaluations but no materialization, and the names of those checks are returned: an asset backfill
    requests a day's Broccoli and load once the day is materialized and does not read checks, so the day
    must count as failed for its downstream to wait (docs/runbook.md, "History backfill")."""
    day = summary.day.isoformat()
    acc = summary.accounting
    results = [reconcile_check(acc), corrupt_check(acc, [summary], max_corrupt_share)]
    blocked = [r.check_name for r in _blocking_failures(context, results)]
    extra = {
        "days": MetadataValue.md(_days_table([summary])),
        "partitions": day,
        "run_partitions": _run_partitions(days),
        "worker_peak_rss_mib": MetadataValue.float(round(summary.worker_peak_rss_kib / 1024, 1)),
        "export_uri": export.uri,
        "feed_uri": feed.uri,
        f"kept_reports_by_scan_hour[{day}]": bar_chart(
            {f"{hour:02d}:00": count for hour, count in enumerate(summary.scan_hours)}, "UTC hour", 30
        ),
        f"sample_rows[{day}]": sample_table(summary.sample_rows, VT_FILE_REPORTS),
        "objects_not_read_names": MetadataValue.md(_not_read([summary])),
    }
    if not blocked:
        metadata = accounting_metadata(acc, extra)
        # A one-day run yields the asset's output: Broccoli and the load in the same run (one day of the three
        # assets) wait for it, so they run after a passing day and are skipped after a blocked one.
        yield (
            Output(None, metadata=metadata) if len(days) == 1
            else AssetMaterialization(asset_key=VT_FILE_REPORTS_KEY, partition=day, metadata=metadata)
        )
    selected = context.selected_asset_check_keys
    for result in results:
        key = AssetCheckKey(VT_FILE_REPORTS_KEY, result.check_name)
        if key in selected:
            yield _evaluation(context, key, result, day)
    return blocked


def latest_materialization(instance, day: str) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The day's latest stored materialization, as the target a check evaluation of the day names."""
    latest = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=VT_FILE_REPORTS_KEY, asset_partitions=[day]), limit=1
    ).records
    if not latest:
        return None
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=latest[0].storage_id, run_id=latest[0].run_id, timestamp=latest[0].timestamp
    )


def _evaluation(context, key: AssetCheckKey, result: AssetCheckResult, day: str) -> AssetCheckEvaluation:
    """``result`` as the evaluation of ``day``'s partition, aimed at the materialization just stored
    (what Dagster does for an ``AssetCheckResult`` of a one-partition step; it has no partition argument).
    A blocked day stored none: its evaluation aims at the day's previous materialization, whose files the
    re-export replaced, so the day's check status is this failure."""
    target = latest_materialization(context.instance, day)
    return AssetCheckEvaluation(
        asset_key=VT_FILE_REPORTS_KEY,
        check_name=key.name,
        passed=result.passed,
        metadata=result.metadata,
        severity=result.severity,
        description=result.description,
        target_materialization_data=target,
        blocking=context.assets_def.get_spec_for_check_key(key).blocking,
        partition=day,
    )


@asset(
    key=VT_FILE_REPORTS_KEY,
    group_name=DOMAIN,
    partitions_def=vt_days,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN),
    description=(
        "One UTC day of the VirusTotal file feed (v2 tar.bz2 and v3 NDJSON.bz2 packages, one per minute) "
        "as Parquet under TI_EXPORT_URI/vt_file_reports/date=YYYY-MM-DD: positives > 0, validated hashes, "
        "newest scan per sha256, written whole or not at all (_SUCCESS manifest last). A run of several "
        "days (a backfill range) records each day's materialization and checks as the day finishes; a day "
        "that fails fails alone: the others stay materialized, the run fails at the end naming it. Both checks "
        "are blocking: a day failing one at ERROR is exported but not materialized, so its Broccoli "
        "classification and load do not start."
    ),
    # Per-day results, never one for a range: the step yields an AssetMaterialization and check
    # evaluations per finished day (see _day_events) and no output for the range.
    output_required=False,
    check_specs=[
        AssetCheckSpec(
            "counts_reconcile",
            asset=VT_FILE_REPORTS_KEY,
            description="read = written + filtered + rejected",
            partitions_def=vt_days,
            blocking=True,
        ),
        AssetCheckSpec(
            "packages_corrupt",
            asset=VT_FILE_REPORTS_KEY,
            description="warns on any corrupt package, fails past max_corrupt_share of the packages found",
            partitions_def=vt_days,
            blocking=True,
        ),
    ],
    pool="vt_decompress",
    retry_policy=ASSET_RETRY_POLICY,
    tags=HEAVY_TAG,
    op_tags=HEAVY_TAG,
    metadata={
        **export_asset_metadata(VT_FILE_REPORTS),
        "export_layout": "vt_file_reports/date=YYYY-MM-DD/part-NNNNN.parquet + _SUCCESS",
    },
    kinds=EXPORT_KINDS,
    owners=OWNERS,
)
def vt_file_reports(
    context: AssetExecutionContext,
    config: VtExportConfig,
    vt_feed: ObjectStoreResource,
    export_store: ObjectStoreResource,
    warehouse: WarehouseResource,
):
    feed, export, wh = vt_feed.get(), export_store.get(), warehouse.get()
    options = options_from(config, ExportOptions)
    days = list(context.partition_keys)
    failed: dict[str, str] = {}
    materialized = blocked_days = 0
    with PackagePool(options.workers) as pool, ExitStack() as day_lock:
        context.log.info(f"{len(days)} day(s) from {feed.uri} with {pool.workers} worker(s) into {export.uri}")
        for day in days:
            try:
                # One run at a time per day, held while the day is exported: the previous day's lock goes first.
                day_lock.close()
                day_lock.enter_context(warehouse.partition_lock(VT_FILE_REPORTS_KEY, day, context.run.run_id))
                summary = _export_one_day(context, feed, export, wh, day, pool, options)
            except Exception as exc:
                if len(days) == 1:
                    raise
                failed[day] = f"{type(exc).__name__}: {exc}"
                context.log.error(
                    f"{ASSET_NAME}[{day}] failed; the run goes on with its other days and fails at the end:\n"
                    + "".join(traceback.format_exception(exc))
                )
                if isinstance(exc, BrokenProcessPool):  # no later day can run in this process pool
                    failed.update((later, f"not run: the process pool broke on {day}") for later in days if later > day)
                    break
                continue
            blocked = yield from _day_events(context, export, feed, summary, days, config.max_corrupt_share)
            if blocked:
                failed[day] = f"blocking check(s) failed: {', '.join(blocked)} (its Broccoli and load wait)"
                blocked_days += 1
                context.log.error(f"{ASSET_NAME}[{day}]: {failed[day]}; the day is not materialized")
                continue
            materialized += 1
    if failed:
        listed = "\n".join(f"- {day}: {error}" for day, error in failed.items())
        raise Failure(
            description=(
                f"{ASSET_NAME}: {len(failed)} of {len(days)} day(s) failed: {', '.join(failed)}. The other "
                f"{materialized} are materialized (each with its own metadata and checks); re-execute the "
                f"backfill's failed partitions (or materialize these days) to redo only them.\n{listed}"
            ),
            metadata={"failed_days": ", ".join(failed), "materialized_days": materialized},
            # A retry of the step would redo every finished day of the range: only when none finished,
            # and never for a failed check (the same packages fail it again).
            allow_retries=materialized == 0 and blocked_days == 0,
        )
    # The check outputs (one per step, not per day) so the step succeeds; the results are the per-day evaluations.
    for key in context.selected_asset_check_keys:
        yield Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))


assets = [vt_file_reports]
