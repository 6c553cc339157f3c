"""The vt_feed/ioc_file_hashes asset: a sample day materialized on SQLite and MariaDB."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, materialize

from ti_pipeline.core import schema
from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.definitions import defs
from ti_pipeline.defs.resources import LoaderResource, ObjectStoreResource, WarehouseResource
from ti_pipeline.defs.vt_feed.load import VT_IOC_FILE_HASHES_KEY, vt_ioc_file_hashes
from ti_pipeline_tests.vt_feed.load.exportdata import classification, report, sha256_of, write_day

DAY = "2024-01-01"


def run(store: LocalStore, warehouse_url: str, day: str = DAY, loader: str | None = None, policy: str | None = None):
    return materialize(
        [vt_ioc_file_hashes],
        partition_key=day,
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
        run_config={"ops": {"vt_feed__ioc_file_hashes": {"config": {"loader": loader}}}} if loader else None,
        resources={
            "warehouse": WarehouseResource(url=warehouse_url, import_classifications=policy),
            "export_store": ObjectStoreResource(setting="TI_EXPORT_URI", uri=store.uri),
            "loader": LoaderResource(batch_rows=2, merge_chunk_rows=2),
        },
    )


def metadata(result) -> dict:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def write_sample_day(store: LocalStore) -> None:
    """Files 0-4: Broccoli says MALWARE for the odd ones, 404 for the even ones; file 5 is WHITELIST."""
    write_day(
        store, DAY,
        [report(n, "2024-01-01 10:00:00") for n in range(6)],
        [classification(n, "MALWARE" if n % 2 else None, 200 if n % 2 else 404) for n in range(5)] + [classification(5, "WHITELIST")],
        parts=2,
    )


def stored(warehouse_url: str) -> dict[bytes, str]:
    engine = sa.create_engine(warehouse_url)
    with engine.connect() as conn:
        got = dict(conn.execute(sa.select(schema.ioc_file_hashes.c.sha256, schema.ioc_file_hashes.c.classification)).all())
    engine.dispose()
    return got


def test_a_sample_day_fills_the_table_with_accounting_and_checks(tmp_path, warehouse_url, data_dir):
    store = LocalStore(tmp_path / "export")
    write_sample_day(store)
    result = run(store, warehouse_url)
    assert result.success
    meta = metadata(result)
    assert {k: meta[k] for k in ("read", "written", "filtered", "rejected", "unaccounted", "inserted", "updated", "kept_older")} == {
        "read": 6, "written": 2, "filtered": 4, "rejected": 0, "unaccounted": 0, "inserted": 2, "updated": 0, "kept_older": 0,
    }
    assert (meta["filtered.classification_not_imported"], meta["not_imported.UNKNOWN"], meta["not_imported.WHITELIST"]) == (4, 3, 1)
    assert meta["import_classifications"] == "RANSOMWARE,MALTOOL,HACKTOOL,UNWANTED,MALWARE,SUSPICIOUS,BLACKLIST,AV_DETECTED"
    assert (meta["loader"], meta["day"], meta["parts"], meta["dagster/row_count"]) == ("sql", DAY, 2, 2)
    assert checks(result) == {"counts_reconcile": True, "sha256s_present": True}
    assert stored(warehouse_url) == {sha256_of(1): "MALWARE", sha256_of(3): "MALWARE"}
    again = metadata(run(store, warehouse_url))
    assert (again["inserted"], again["reapplied"], again["filtered.classification_not_imported"]) == (0, 2, 4)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("ALL", {**{sha256_of(n): "UNKNOWN" for n in (0, 2, 4)}, sha256_of(1): "MALWARE", sha256_of(3): "MALWARE", sha256_of(5): "WHITELIST"}),
        ("WHITELIST", {sha256_of(5): "WHITELIST"}),
    ],
)
def test_ti_import_classifications_decides_what_enters(tmp_path, warehouse_url, data_dir, monkeypatch, setting, expected):
    store = LocalStore(tmp_path / "export")
    write_sample_day(store)
    monkeypatch.setenv("TI_IMPORT_CLASSIFICATIONS", setting)
    meta = metadata(run(store, warehouse_url))
    assert stored(warehouse_url) == expected
    assert (meta["written"], meta["filtered.classification_not_imported"], meta["unaccounted"]) == (len(expected), 6 - len(expected), 0)


def test_an_invalid_classification_name_fails_the_run_clearly(tmp_path, warehouse_url, data_dir):
    store = LocalStore(tmp_path / "export")
    write_sample_day(store)
    result = run(store, warehouse_url, policy="MALWARE,TROJANS")
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "TI_IMPORT_CLASSIFICATIONS names TROJANS, not classification values (one of RANSOMWARE," in str(failure.step_failure_data.error)
    assert stored(warehouse_url) == {}


def test_an_incomplete_export_fails_the_run_naming_the_manifest(tmp_path, sqlite_url, data_dir):
    store = LocalStore(tmp_path / "export")
    result = run(store, sqlite_url)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "vt_file_reports/date=2024-01-01/_SUCCESS does not exist" in str(failure.step_failure_data.error)


def test_a_tidb_only_loader_is_chosen_by_run_config(tmp_path, sqlite_url, data_dir):
    store = LocalStore(tmp_path / "export")
    write_day(store, DAY, [report(0, "2024-01-01 10:00:00")], [])
    result = run(store, sqlite_url, loader="import_into")
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    # SQLite has no IMPORT INTO: the statement reached the warehouse and failed there.
    assert "IMPORT INTO" in str(failure.step_failure_data.error)


def test_both_feeders_of_the_table_are_plain_in_the_code_location():
    graph = defs.resolve_asset_graph()
    vt = graph.get(VT_IOC_FILE_HASHES_KEY)
    dump = graph.get(AssetKey(["sage_dump", "ioc_file_hashes"]))
    assert vt.metadata["dagster/table_name"] == dump.metadata["dagster/table_name"] == "ioc_file_hashes"
    assert "sage_dump/ioc_file_hashes" in vt.description
    assert vt.group_name == "vt_feed"
    assert {AssetKey(["vt_feed", "vt_file_reports"]), AssetKey(["vt_feed", "broccoli_classifications"])} <= set(vt.parent_keys)
    job = defs.resolve_job_def("vt_load_job")
    assert set(job.asset_layer.executable_asset_keys) == {VT_IOC_FILE_HASHES_KEY, AssetKey(["vt_feed", "broccoli_classifications"])}
