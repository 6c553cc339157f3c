import struct

import bson
import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, materialize

from ti_pipeline import schema
from ti_pipeline.assets import sage_dump
from ti_pipeline.objectstore import LocalStore, open_store
from ti_pipeline.resources import ObjectStoreResource, WarehouseResource
from ti_pipeline.sample_data.sage import dump_name, write_dump_file, write_sage_dump

UNDECODABLE = struct.pack("<i", 12) + b"\x99a\x00" + b"\x00\x00\x00\x00" + b"\x00"
SINGLE_PROCESS = {"workers": 1, "block_mib": 1}


def report(n: int, scan_date: str, positives: int = 5, **extra) -> dict:
    value = {"response_code": 1, "sha256": f"{n:064x}", "sha1": f"{n:040x}", "md5": f"{n:032x}",
             "scan_date": scan_date, "positives": positives, "total": 70,
             "scans": {"E1": {"detected": True, "result": f"Mal.{n}"}, "E2": {"detected": False, "result": None}}}
    value.update(extra)
    return {"_id": f"{n:040x}", "response": "malware.virus(1,1);NONE.null", "value": value}


def materialize_dump(store_uri: str, warehouse_url: str, keys: list[str], partition: str | None = None, config=None,
                     raise_on_error: bool = True):
    assets = {k: a for a in sage_dump.assets for k in a.keys}
    selected = list({id(assets[AssetKey(["sage_dump", k])]): assets[AssetKey(["sage_dump", k])] for k in keys}.values())
    ops = {a.op.name: {"config": config or SINGLE_PROCESS} for a in selected}
    return materialize(
        selected,
        selection=[AssetKey(["sage_dump", k]) for k in keys],
        partition_key=partition,
        instance=DagsterInstance.ephemeral(),
        run_config={"ops": ops},
        raise_on_error=raise_on_error,
        resources={
            "warehouse": WarehouseResource(url=warehouse_url),
            "sage_dump": ObjectStoreResource(setting="TI_SAGE_DUMP_URI", uri=store_uri),
        },
    )


def rows(warehouse_url: str, table: sa.Table, *columns: str) -> list[tuple]:
    engine = sa.create_engine(warehouse_url)
    with engine.connect() as conn:
        cols = [table.c[c] for c in columns]
        out = [tuple(r) for r in conn.execute(sa.select(*cols).order_by(*cols))]
    engine.dispose()
    return out


def metadata_of(result, name: str) -> dict:
    [mat] = [m for m in result.get_asset_materialization_events() if m.asset_key == AssetKey(["sage_dump", name])]
    return {k: v.value for k, v in mat.materialization.metadata.items()}


def write_raw(store: LocalStore, name: str, data: bytes) -> None:
    store.write_bytes(name, data)


def test_file_rep_partition_loads_rows_and_quarantines_bad_input(tmp_path, warehouse_url):
    store = LocalStore(tmp_path / "dump")
    good = [report(1, "2020-10-01 00:00:00"), report(2, "2020-10-02 00:00:00", sha256=f"{2:064X}")]
    no_report = {"_id": "x", "response": "unknown(-1,-1)", "value": {"response_code": 0}}
    bad_hex = report(3, "2020-10-03 00:00:00", sha256="zz" + "0" * 62)
    docs = [bson.encode(d) for d in (good[0], no_report, bad_hex)]
    torn = bson.encode(good[1])
    data = docs[0] + docs[1] + UNDECODABLE + docs[2] + bson.encode(good[1]) + torn[:20]
    write_raw(store, dump_name("r01", "file_rep"), data)

    for _ in range(2):  # the second run must leave exactly the same rows and quarantine
        result = materialize_dump(store.uri, warehouse_url, ["ioc_file_hashes"], "r01")
        assert result.success
        meta = metadata_of(result, "ioc_file_hashes")
        assert {k: meta[k] for k in ("read", "written", "filtered", "rejected", "unaccounted")} == {
            "read": 6, "written": 2, "filtered": 1, "rejected": 3, "unaccounted": 0}
        assert meta["filtered.response_code_not_1"] == 1
        assert meta["classification.MALWARE"] == 2
        assert f"{1:064x}" in meta["sample_rows"] and f"{2:064x}" in meta["sample_rows"]
        assert "| rejected: torn_document | 1 |" in meta["where_records_went"]
        assert "| MALWARE | 2 |" in meta["classification_mix"]
        assert meta["rejected.invalid_sha256"] == meta["rejected.undecodable_document"] == meta["rejected.torn_document"] == 1
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {"counts_reconcile": True, "valid_keys": True}

        assert rows(warehouse_url, schema.ioc_file_hashes, "sha256", "classification", "source", "positives", "detection_names") == [
            (bytes.fromhex(f"{1:064x}"), "MALWARE", "SAGE_DUMP", 5, "E1:Mal.1"),
            (bytes.fromhex(f"{2:064x}"), "MALWARE", "SAGE_DUMP", 5, "E1:Mal.2"),
        ]
        q = schema.quarantine
        assert rows(warehouse_url, q, "byte_offset", "reason") == [
            (len(docs[0]) + len(docs[1]), "undecodable_document: " + rows(warehouse_url, q, "reason")[2][0].split(": ", 1)[1]),
            (len(docs[0]) + len(docs[1]) + len(UNDECODABLE), "invalid_sha256"),
            (len(data) - 20, "torn_document (20 bytes not readable)"),
        ]


def test_newest_scan_wins_whatever_the_shard_order(tmp_path, warehouse_url):
    store = LocalStore(tmp_path / "dump")
    write_dump_file(store, dump_name("r01", "file_rep"), iter([report(7, "2020-01-01 00:00:00", positives=1)]))
    write_dump_file(store, dump_name("r02", "file_rep"), iter([report(7, "2020-06-01 00:00:00", positives=9)]))
    write_dump_file(store, dump_name("r03", "file_rep"), iter([report(7, "2020-03-01 00:00:00", positives=4)]))
    for shard in ("r02", "r01", "r03"):
        assert materialize_dump(store.uri, warehouse_url, ["ioc_file_hashes"], shard).success
        assert rows(warehouse_url, schema.ioc_file_hashes, "positives") == [(9,)]


@pytest.mark.parametrize("tokens_first", [True, False])
def test_domain_token_outranks_the_dump_in_either_order(tmp_path, warehouse_url, tokens_first):
    store = LocalStore(tmp_path / "dump")
    write_dump_file(store, dump_name("r01", "domain_classification"), iter([
        {"_id": "shared.example.com", "response": "maliciousClassification=malware", "lastUpdate": 1600000000000,
         "value": {"detectedUrls": [{"positives": 3}]}},
        {"_id": "other.example.com", "response": "maliciousClassification=phishing", "value": {}},
    ]))
    write_dump_file(store, dump_name("r01", "TOKENS"), iter([
        {"_id": "Shared.Example.com", "response": "whitelist", "value": {"type": "DOMAIN", "source": "rule-team"}},
        {"_id": "203.0.113.9", "response": "malware", "value": {"type": "IPv4"}},
    ]))
    runs = [(["ioc_tokens", "ioc_ips"], None), (["ioc_domains"], "r01")]
    for keys, partition in runs if tokens_first else runs[::-1]:
        assert materialize_dump(store.uri, warehouse_url, keys, partition).success
    assert rows(warehouse_url, schema.ioc_domains, "domain", "classification", "source", "positives") == [
        ("other.example.com", "PHISHING", "SAGE_DUMP", None),
        ("shared.example.com", "WHITELIST", "TOKENS", None),
    ]
    assert rows(warehouse_url, schema.ioc_ips, "address", "classification", "source") == [("203.0.113.9", "MALWARE", "TOKENS")]


def test_whole_sample_dump_fills_every_table_and_reconciles(tmp_path, warehouse_url):
    store = LocalStore(tmp_path / "dump")
    write_sage_dump(store, docs_per_shard=120)
    results = [materialize_dump(store.uri, warehouse_url, ["ioc_file_hashes", "ioc_domains"], shard) for shard in ("r01", "r03", "r05")]
    results.append(materialize_dump(store.uri, warehouse_url, ["ioc_tokens", "ioc_ips", "file_extension_classification"]))
    for result in results:
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())
    file_meta = metadata_of(results[1], "ioc_file_hashes")  # r03 ends in a torn document
    assert file_meta["rejected.torn_document"] == 1 and file_meta["unaccounted"] == 0
    assert metadata_of(results[2], "ioc_file_hashes")["read"] == 120  # r05 is gzipped
    engine = sa.create_engine(warehouse_url)
    with engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one()  # noqa: S608 - fixed names
                  for t in ("ioc_file_hashes", "ioc_domains", "ioc_tokens", "ioc_ips", "file_extension_classification")}
    engine.dispose()
    assert all(counts.values()), counts
    assert counts["file_extension_classification"] == 39


def test_process_pool_gives_the_same_rows_as_one_process(tmp_path, sqlite_url):
    store = LocalStore(tmp_path / "dump")
    write_dump_file(store, dump_name("r04", "file_rep"), iter([report(i, "2020-10-01 00:00:00") for i in range(1, 300)]))
    assert materialize_dump(store.uri, sqlite_url, ["ioc_file_hashes"], "r04", {"workers": 2, "block_mib": 1}).success
    pooled = rows(sqlite_url, schema.ioc_file_hashes, "sha256", "detection_names")
    assert len(pooled) == 299


def test_gcs_dump_path_on_the_emulator(gcs_bucket, sqlite_url):
    store = open_store(f"gs://{gcs_bucket}/sage_prod_dump")
    write_dump_file(store, dump_name("r02", "file_rep", gz=True), iter([report(5, "2020-10-01 00:00:00")]), gz=True)
    result = materialize_dump(store.uri, sqlite_url, ["ioc_file_hashes"], "r02")
    assert result.success
    assert rows(sqlite_url, schema.ioc_file_hashes, "sha256") == [(bytes.fromhex(f"{5:064x}"),)]


def test_missing_dump_file_fails_with_its_location(tmp_path, sqlite_url):
    store = LocalStore(tmp_path / "empty")
    result = materialize_dump(store.uri, sqlite_url, ["ioc_file_hashes"], "r06", raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no file_rep.bson(.gz)" in str(failure.event_specific_data.error.message)
    assert "r06" in str(failure.event_specific_data.error.message)
