"""The VirusTotal feed, one UTC day of packages → the deduplicated ``vt_file_reports`` Parquet partition."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ti_pipeline.core.accounting import Accounting
from ti_pipeline.defs.config import fields_of, options_from
from ti_pipeline.defs.metadata import Progress, accounting_metadata, bar_chart, reconcile_check, sample_table
from ti_pipeline.defs.partitions import vt_days
from ti_pipeline.defs.resources import ObjectStoreResource, WarehouseResource
from ti_pipeline.vt_feed.export import DaySummary, ExportOptions, PackagePool, export_day
from ti_pipeline.vt_feed.package import PackageResult
from ti_pipeline.vt_feed.summary import hourly_scans, sample_rows

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


@asset(
    key=VT_FILE_REPORTS_KEY,
    group_name=DOMAIN,
    partitions_def=vt_days,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN),
    description=(
        "One UTC day of the VirusTotal file feed (v2 tar.bz2 and v3 NDJSON.bz2 packages, one per minute) "
        "as Parquet under TI_EXPORT_URI/vt_file_reports/date=YYYY-MM-DD: positives > 0, validated hashes, "
        "newest scan per sha256, written whole or not at all (_SUCCESS manifest last)."
    ),
    check_specs=[
        AssetCheckSpec("counts_reconcile", asset=VT_FILE_REPORTS_KEY, description="read = written + filtered + rejected"),
        AssetCheckSpec(
            "packages_corrupt",
            asset=VT_FILE_REPORTS_KEY,
            description="warns on any corrupt package, fails past max_corrupt_share of the packages found",
        ),
    ],
    pool="vt_decompress",
    tags=HEAVY_TAG,
    op_tags=HEAVY_TAG,
    metadata={"export_layout": "vt_file_reports/date=YYYY-MM-DD/part-NNNNN.parquet + _SUCCESS"},
    kinds={"python", "parquet"},
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
    total = Accounting()
    summaries: list[DaySummary] = []
    with PackagePool(options.workers) as pool:
        context.log.info(f"{len(days)} day(s) from {feed.uri} with {pool.workers} worker(s) into {export.uri}")
        for day in days:
            wh.clear_quarantine(ASSET_NAME, day)
            progress = Progress(context.log, f"{ASSET_NAME}[{day}]")
            done = Accounting()

            def on_package(result: PackageResult, done: Accounting = done, progress: Progress = progress) -> None:
                done.merge(result.accounting)
                done.figures["bytes"] += result.compressed_bytes
                progress.update(done.read, done.figures["bytes"])

            summary = export_day(
                feed,
                export,
                day,
                pool,
                options,
                on_quarantine=lambda records, day=day: wh.add_quarantine(ASSET_NAME, day, records),
                on_package=on_package,
            )
            if summary.objects_not_read:
                context.log.warning(
                    f"{ASSET_NAME}[{day}]: {len(summary.objects_not_read)} object(s) whose names are not "
                    f"{{YYYYMMDD}}T{{HHMM}} packages were not read: {', '.join(summary.objects_not_read[:20])}"
                )
            context.log.info(f"{ASSET_NAME}[{day}]: {summary.accounting.as_dict()}")
            summaries.append(summary)
            total.merge(summary.accounting)
    extra = {
        "days": MetadataValue.md(_days_table(summaries)),
        "partitions": ", ".join(days) if len(days) <= 3 else f"{days[0]} .. {days[-1]} ({len(days)} days)",
        "worker_peak_rss_mib": MetadataValue.float(round(max(s.worker_peak_rss_kib for s in summaries) / 1024, 1)),
        "export_uri": export.uri,
        "feed_uri": feed.uri,
        f"kept_reports_by_scan_hour[{days[-1]}]": MetadataValue.md(bar_chart(hourly_scans(export, days[-1]), "UTC hour", 30)),
        f"sample_rows[{days[-1]}]": MetadataValue.md(sample_table(sample_rows(export, days[-1]))),
        "objects_not_read_names": MetadataValue.md(_not_read(summaries)),
    }
    yield MaterializeResult(metadata=accounting_metadata(total, extra))
    yield reconcile_check(total)
    yield corrupt_check(total, summaries, config.max_corrupt_share)


assets = [vt_file_reports]
