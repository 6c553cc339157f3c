"""The vt_feed/vt_file_reports asset on sample packages: one day, a day range, checks, quarantine, re-runs."""

from pathlib import Path

import pyarrow.parquet as pq
import sqlalchemy as sa
from dagster import AssetCheckSeverity, AssetKey, BackfillPolicy, DagsterInstance, materialize

from ti_pipeline.core import schema
from ti_pipeline.core.exports import VT_FILE_REPORTS, Manifest, require_export
from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.defs.metadata import column_schema
from ti_pipeline.defs.resources import ObjectStoreResource, WarehouseResource
from ti_pipeline.defs.vt_feed.export import vt_file_reports
from ti_pipeline.sample_data.vt import SAMPLE_DAYS, write_vt_feed

KEY = AssetKey(["vt_feed", "vt_file_reports"])


def manifest_of(store: LocalStore, day: str) -> Manifest:
    return require_export(store, "vt_file_reports", day).manifest


def resources(tmp_path: Path, warehouse_url: str) -> dict:
    return {
        "warehouse": WarehouseResource(url=warehouse_url),
        "vt_feed": ObjectStoreResource(setting="TI_VT_FEED_URI", uri=(tmp_path / "feed").as_uri()),
        "export_store": ObjectStoreResource(setting="TI_EXPORT_URI", uri=(tmp_path / "export").as_uri()),
    }


def run(tmp_path: Path, warehouse_url: str, instance=None, config: dict | None = None, **kwargs):
    return materialize(
        [vt_file_reports],
        resources=resources(tmp_path, warehouse_url),
        instance=instance or DagsterInstance.ephemeral(),
        run_config={"ops": {"vt_feed__vt_file_reports": {"config": {"workers": 1, **(config or {})}}}},
        **kwargs,
    )


def quarantine_reasons(warehouse_url: str, day: str) -> list[str]:
    q = schema.quarantine
    engine = sa.create_engine(warehouse_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(q.c.reason).where(q.c.asset == "vt_feed/vt_file_reports", q.c.partition_key == day).order_by(q.c.id)
        )
        reasons = [r.reason.split(": ")[0] for r in rows]
    engine.dispose()
    return reasons


def test_one_day_with_a_corrupt_package(tmp_path: Path, warehouse_url: str):
    write_vt_feed(LocalStore(tmp_path / "feed"))
    instance = DagsterInstance.ephemeral()

    # 1 of 4 packages corrupt: admitted by a max_corrupt_share of 0.5, the check only warns.
    result = run(tmp_path, warehouse_url, instance=instance, partition_key="2020-11-02", config={"max_corrupt_share": 0.5})

    assert result.success
    (materialization,) = result.asset_materializations_for_node("vt_feed__vt_file_reports")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    manifest = manifest_of(LocalStore(tmp_path / "export"), "2020-11-02")
    assert meta["written"] == manifest.rows == meta["dagster/row_count"] > 0
    assert meta["read"] == meta["written"] + meta["filtered"] + meta["rejected"]
    assert (meta["packages_found"], meta["packages_missing"], meta["packages_corrupt"]) == (4, 1436, 1)
    assert (meta["rejected.corrupt_package"], meta["rejected.malformed_json"], meta["filtered.not_found"]) == (1, 2, 2)
    hourly = meta["kept_reports_by_scan_hour[2020-11-02]"]
    assert [c.name for c in hourly.schema.columns] == ["UTC hour", "count", "bar"]
    assert sum(r.data["count"] for r in hourly.records) == manifest.rows
    first = pq.read_table(tmp_path / "export" / manifest.parts[0].name).slice(0, 1).to_pylist()[0]
    sample = meta["sample_rows[2020-11-02]"]
    assert sample.schema == column_schema(VT_FILE_REPORTS)  # the export's columns, typed as the Parquet schema
    assert {k: sample.records[0].data[k] for k in ("sha256", "positives", "total", "source_package")} == \
        {"sha256": first["sha256"].hex(), "positives": first["positives"], "total": first["total"],
         "source_package": first["source_package"]}
    assert meta["unaccounted"] == 0
    assert (meta["objects_not_read"], meta["objects_not_read_names"]) == (0, "none")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["counts_reconcile"].passed
    corrupt = checks["packages_corrupt"]
    assert (corrupt.passed, corrupt.severity, corrupt.blocking) == (False, AssetCheckSeverity.WARN, True)
    assert quarantine_reasons(warehouse_url, "2020-11-02") == [
        "malformed_json",
        "missing_sha256",
        "invalid_sha256",
        "invalid_number:positives",
        "out_of_range:positives",
        "in_future:scan_date",
        "malformed_json",
        "corrupt_package",
        "out_of_range:scan_date",
    ]

    # Under the default 5 %, the blocking check fails at ERROR: the day is exported but not materialized
    # (so nothing downstream starts), the step fails unretried naming the check.
    again = run(tmp_path, warehouse_url, instance=instance, partition_key="2020-11-02", raise_on_error=False)
    assert not again.success
    assert again.get_asset_materialization_events() == []
    [failure] = [e for e in again.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    assert "2020-11-02: blocking check(s) failed: packages_corrupt" in error.message
    assert failure.step_failure_data.user_failure_data.metadata["materialized_days"].value == 0
    checks = {c.check_name: c for c in again.get_asset_check_evaluations()}
    assert (checks["packages_corrupt"].passed, checks["packages_corrupt"].severity) == (False, AssetCheckSeverity.ERROR)
    assert checks["counts_reconcile"].passed
    [latest] = instance.fetch_materializations(KEY, limit=1).records
    assert latest.run_id == result.run_id  # still the admitted export's
    assert len(quarantine_reasons(warehouse_url, "2020-11-02")) == 9  # replaced, not appended


def test_objects_that_only_look_like_packages_are_listed_not_read(tmp_path: Path, sqlite_url: str):
    write_vt_feed(LocalStore(tmp_path / "feed"))

    result = run(tmp_path, sqlite_url, partition_key="2020-11-01")

    assert result.success
    (materialization,) = result.asset_materializations_for_node("vt_feed__vt_file_reports")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    names = ["20201101/20201101T0122.partial", "20201101/20201101T0122.tmp", "20201101/20201101T0122~"]
    assert (meta["objects_not_read"], meta["objects_not_read_names"]) == (3, "\n".join(f"- `{n}`" for n in names))
    assert meta["packages_found"] == 4
    assert manifest_of(LocalStore(tmp_path / "export"), "2020-11-01").details["objects_not_read"] == names


def test_backfills_run_ranges_of_days():
    assert vt_file_reports.backfill_policy == BackfillPolicy.multi_run(max_partitions_per_run=60)
    assert vt_file_reports.partitions_def.get_first_partition_key() == "2020-11-01"


def test_a_partition_range_in_one_run(tmp_path: Path, sqlite_url: str):
    write_vt_feed(LocalStore(tmp_path / "feed"))
    instance = DagsterInstance.ephemeral()

    result = run(
        tmp_path,
        sqlite_url,
        instance=instance,
        config={"max_corrupt_share": 0.5},  # the second day's one corrupt package of four, admitted
        tags={"dagster/asset_partition_range_start": SAMPLE_DAYS[0], "dagster/asset_partition_range_end": SAMPLE_DAYS[-1]},
    )

    assert result.success
    export = LocalStore(tmp_path / "export")
    manifests = [manifest_of(export, day) for day in SAMPLE_DAYS]
    assert all(m.rows > 0 for m in manifests)
    # One materialization per day, in order, each with that day's own figures, chart and sample rows.
    materializations = result.asset_materializations_for_node("vt_feed__vt_file_reports")
    assert [m.partition for m in materializations] == list(SAMPLE_DAYS)
    for m, manifest, day in zip(materializations, manifests, SAMPLE_DAYS, strict=True):
        meta = {k: v.value for k, v in m.metadata.items()}
        assert meta["written"] == meta["dagster/row_count"] == manifest.rows
        assert meta["read"] == manifest.details["accounting"]["read"]
        assert (meta["packages_expected"], meta["packages_found"], meta["partitions"]) == (1440, 4, day)
        assert {f"kept_reports_by_scan_hour[{day}]", f"sample_rows[{day}]"} <= set(meta)
        assert meta["run_partitions"] == ", ".join(SAMPLE_DAYS)
    assert [m.metadata["packages_corrupt"].value for m in materializations] == [0, 1, 0]
    # The checks too, one evaluation per day and check, each for its partition.
    checks = sorted((c.partition, c.check_name) for c in result.get_asset_check_evaluations())
    assert checks == sorted((day, name) for day in SAMPLE_DAYS for name in ("counts_reconcile", "packages_corrupt"))
    assert instance.get_materialized_partitions(KEY) == set(SAMPLE_DAYS)
    for day in SAMPLE_DAYS:
        assert quarantine_reasons(sqlite_url, day)[:1] == ["malformed_json"]


def test_a_blocking_check_failing_on_one_day_of_a_range_holds_back_only_that_day(tmp_path: Path, sqlite_url: str):
    """Under the default 5 %, the second sample day's packages_corrupt fails at ERROR: the other two days
    are materialized, that one is exported and checked but not materialized, and the run fails naming it."""
    write_vt_feed(LocalStore(tmp_path / "feed"))
    instance = DagsterInstance.ephemeral()
    first, blocked, last = SAMPLE_DAYS

    result = run(
        tmp_path, sqlite_url, instance=instance, raise_on_error=False,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
    )

    assert not result.success
    assert [m.partition for m in result.asset_materializations_for_node("vt_feed__vt_file_reports")] == [first, last]
    assert instance.get_materialized_partitions(KEY) == {first, last}
    failed = {(c.partition, c.check_name) for c in result.get_asset_check_evaluations() if not c.passed}
    assert failed == {(blocked, "packages_corrupt")}
    assert len(result.get_asset_check_evaluations()) == 6  # every day's two checks are recorded
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert f"1 of 3 day(s) failed: {blocked}" in failure.step_failure_data.error.message
    assert manifest_of(LocalStore(tmp_path / "export"), blocked).rows > 0  # exported, for the operator to inspect
