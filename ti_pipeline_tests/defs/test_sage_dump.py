import gzip
import struct
import zlib
from datetime import UTC, datetime, timedelta

import bson
import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, TableRecord, materialize

from ti_pipeline.core import migrations, schema
from ti_pipeline.core.objectstore import LocalStore, ObjectStore, open_store
from ti_pipeline.defs import sage_dump
from ti_pipeline.defs.resources import ObjectStoreResource, WarehouseResource
from ti_pipeline.defs.sage_dump import SAMPLE_COLUMNS
from ti_pipeline.sage_dump import layout
from ti_pipeline.sample_data.sage import dump_name, write_dump_file, write_sage_dump

UNDECODABLE = struct.pack("<i", 12) + b"\x99a\x00" + b"\x00\x00\x00\x00" + b"\x00"
SINGLE_PROCESS = {"workers": 1, "block_mib": 1}
PRODUCTION_SET = "RANSOMWARE,MALTOOL,HACKTOOL,UNWANTED,MALWARE,SUSPICIOUS,BLACKLIST,AV_DETECTED"
DAY = "2020-10-01 00:00:00"


def report(n: int, scan_date: str = DAY, positives: int = 5, response: str = "malware.virus(1,1);NONE.null", **extra) -> dict:
    value = {"response_code": 1, "sha256": f"{n:064x}", "sha1": f"{n:040x}", "md5": f"{n:032x}",
             "scan_date": scan_date, "positives": positives, "total": 70,
             "scans": {"E1": {"detected": True, "result": f"Mal.{n}"}, "E2": {"detected": False}}}
    value.update(extra)
    return {"_id": f"{n:040x}", "response": response, "value": value}


def token(value: str, kind: str, response: str = "malware", **extra) -> dict:
    return {"_id": value, "_class": "com.cybereason.sage.model.dataset.tokens.TokenRecord", "response": response,
            "value": {"maliciousType": "malware", "source": "rule-team", "link": "", "type": kind, **extra}}


TOKENS_HEADER = {"_id": "TOKENS", "_class": "com.cybereason.sage.model.dataset.DatasetInfo", "version": "41.0"}


def materialize_dump(store_uri: str, warehouse_url: str, keys: list[str], partition: str | None = None, config=None,
                     raise_on_error: bool = True, import_classifications: str | None = None, instance=None):
    assets = {k: a for a in sage_dump.assets for k in a.keys}
    selected = list({id(assets[AssetKey(["sage_dump", k])]): assets[AssetKey(["sage_dump", k])] for k in keys}.values())
    ops = {a.op.name: {"config": config or SINGLE_PROCESS} for a in selected}
    return materialize(
        selected,
        selection=[AssetKey(["sage_dump", k]) for k in keys],
        partition_key=partition,
        instance=instance or DagsterInstance.ephemeral(),
        run_config={"ops": ops},
        raise_on_error=raise_on_error,
        resources={
            "warehouse": WarehouseResource(url=warehouse_url, import_classifications=import_classifications),
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


def quarantine(warehouse_url: str) -> list[tuple]:
    return rows(warehouse_url, schema.quarantine, "asset", "partition_key", "byte_offset", "reason")


def metadata_of(result, name: str) -> dict:
    [mat] = [m for m in result.get_asset_materialization_events() if m.asset_key == AssetKey(["sage_dump", name])]
    return {k: v.value for k, v in mat.materialization.metadata.items()}


def balance(meta: dict) -> dict:
    return {k: meta[k] for k in ("read", "written", "filtered", "rejected", "unaccounted")}


def failure_message(result) -> str:
    """The message of the step's ``Failure`` (a clear error, not a crash's traceback)."""
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.event_specific_data.error
    assert error.cls_name == "Failure", error.message
    return error.message.split(": ", 1)[1].strip()


def encode(docs: list[dict]) -> bytes:
    return b"".join(bson.encode(d) for d in docs)


@pytest.fixture
def migrated_url(warehouse_url: str) -> str:
    """Each warehouse dialect at the code's migration head, as ``ti-pipeline migrate`` leaves it."""
    migrations.upgrade(warehouse_url)
    return warehouse_url


@pytest.fixture(params=["local", "gcs"])
def dump_store(request, tmp_path) -> ObjectStore:
    """The dump root as a local folder and as a bucket prefix on the GCS emulator."""
    if request.param == "local":
        return LocalStore(tmp_path / "dump")
    return open_store(f"gs://{request.getfixturevalue('gcs_bucket')}/sage_prod_dump")


def test_file_rep_partition_loads_rows_and_quarantines_bad_input(tmp_path, migrated_url):
    store = LocalStore(tmp_path / "dump")
    good = [report(1), report(2, "2020-10-02 00:00:00", sha256=f"{2:064X}")]
    no_report = {"_id": "x", "response": "unknown(-1,-1)", "value": {"response_code": 0}}
    bad_hex = report(3, "2020-10-03 00:00:00", sha256="zz" + "0" * 62)
    docs = [bson.encode(d) for d in (good[0], no_report, bad_hex)]
    torn = bson.encode(good[1])
    data = docs[0] + docs[1] + UNDECODABLE + docs[2] + bson.encode(good[1]) + torn[:20]
    store.write_bytes(dump_name("r01", "file_rep"), data)

    for _ in range(2):  # the second run must leave exactly the same rows and quarantine
        result = materialize_dump(store.uri, migrated_url, ["ioc_file_hashes"], "r01")
        assert result.success
        meta = metadata_of(result, "ioc_file_hashes")
        assert balance(meta) == {"read": 6, "written": 2, "filtered": 1, "rejected": 3, "unaccounted": 0}
        assert meta["filtered.response_code_not_1"] == 1
        assert meta["classification.MALWARE"] == 2
        assert meta["sample_rows"].records == [
            TableRecord({"sha256": f"{1:064x}", "classification": "MALWARE", "positives": 5, "total": 70,
                         "scan_date": "2020-10-01 00:00:00", "detection_names": "E1:Mal.1"}),
            TableRecord({"sha256": f"{2:064x}", "classification": "MALWARE", "positives": 5, "total": 70,
                         "scan_date": "2020-10-02 00:00:00", "detection_names": "E1:Mal.2"}),
        ]
        assert [c.name for c in meta["sample_rows"].schema.columns] == list(SAMPLE_COLUMNS["ioc_file_hashes"])
        assert meta["where_records_went"].records == [
            TableRecord({"outcome": "written", "count": 2, "bar": "█" * 40}),
            TableRecord({"outcome": "filtered: response_code_not_1", "count": 1, "bar": "█" * 20}),
            TableRecord({"outcome": "rejected: undecodable_document", "count": 1, "bar": "█" * 20}),
            TableRecord({"outcome": "rejected: invalid_sha256", "count": 1, "bar": "█" * 20}),
            TableRecord({"outcome": "rejected: torn_document", "count": 1, "bar": "█" * 20}),
        ]
        assert meta["classification_mix"].records == [
            TableRecord({"classification": "MALWARE", "count": 2, "bar": "█" * 40})]
        assert meta["rejected.invalid_sha256"] == meta["rejected.undecodable_document"] == meta["rejected.torn_document"] == 1
        assert meta["files_read"] == store.url_of("cr-mongo-shard-r01.cybereason.net/cybereason/file_rep.bson")
        assert meta["files_ignored"] == "none"
        assert meta["import_classifications"] == PRODUCTION_SET
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {"counts_reconcile": True, "valid_keys": True}

        assert rows(migrated_url, schema.ioc_file_hashes, "sha256", "classification", "source", "positives", "detection_names") == [
            (bytes.fromhex(f"{1:064x}"), "MALWARE", "SAGE_DUMP", 5, "E1:Mal.1"),
            (bytes.fromhex(f"{2:064x}"), "MALWARE", "SAGE_DUMP", 5, "E1:Mal.2"),
        ]
        q = schema.quarantine
        assert rows(migrated_url, q, "byte_offset", "reason") == [
            (len(docs[0]) + len(docs[1]), "undecodable_document: " + rows(migrated_url, q, "reason")[2][0].split(": ", 1)[1]),
            (len(docs[0]) + len(docs[1]) + len(UNDECODABLE), "invalid_sha256"),
            (len(data) - 20, "torn_document (20 bytes not readable)"),
        ]


# ---- where the files are ---------------------------------------------------------------------------


@pytest.mark.parametrize("shard_dir", [layout.PRODUCTION_SHARD_DIR, layout.PLAIN_SHARD_DIR], ids=["production", "plain"])
def test_either_layout_is_found_without_a_setting(dump_store, sqlite_url, shard_dir, monkeypatch):
    monkeypatch.delenv("TI_SAGE_SHARD_DIR", raising=False)
    name = dump_name("r02", "file_rep", shard_dir=shard_dir)
    write_dump_file(dump_store, name, iter([report(5)]))
    result = materialize_dump(dump_store.uri, sqlite_url, ["ioc_file_hashes"], "r02")
    assert result.success
    assert metadata_of(result, "ioc_file_hashes")["files_read"] == dump_store.url_of(name)
    assert rows(sqlite_url, schema.ioc_file_hashes, "sha256") == [(bytes.fromhex(f"{5:064x}"),)]


def test_both_layouts_for_one_shard_is_a_clear_error(dump_store, sqlite_url, monkeypatch):
    monkeypatch.delenv("TI_SAGE_SHARD_DIR", raising=False)
    write_dump_file(dump_store, dump_name("r03", "file_rep"), iter([report(1)]))
    write_dump_file(dump_store, dump_name("r03", "domain_classification", shard_dir="{shard}"), iter([]))
    write_dump_file(dump_store, dump_name("r04", "file_rep"), iter([report(2)]))
    result = materialize_dump(dump_store.uri, sqlite_url, ["ioc_file_hashes"], "r03", raise_on_error=False)
    assert not result.success
    assert failure_message(result) == (
        f"shard r03 is in two folders: {dump_store.url_of('cr-mongo-shard-r03.cybereason.net/cybereason/')} and "
        f"{dump_store.url_of('r03/cybereason/')}; remove one, or set TI_SAGE_SHARD_DIR "
        "(e.g. cr-mongo-shard-{shard}.cybereason.net) to say which to read"
    )
    assert rows(sqlite_url, schema.ioc_file_hashes, "sha256") == []
    assert materialize_dump(dump_store.uri, sqlite_url, ["ioc_file_hashes"], "r04").success  # other shards read on


def test_the_shard_dir_template_overrides_discovery(dump_store, sqlite_url, monkeypatch):
    monkeypatch.delenv("TI_SAGE_SHARD_DIR", raising=False)
    write_dump_file(dump_store, dump_name("r01", "file_rep"), iter([report(1)]))
    write_dump_file(dump_store, dump_name("r01", "file_rep", shard_dir="{shard}"), iter([report(2)]))
    write_dump_file(dump_store, dump_name("r01", "file_rep", shard_dir="mongo-{shard}-copy"), iter([report(3)]))

    def loaded(config=None) -> list[tuple]:
        result = materialize_dump(dump_store.uri, sqlite_url, ["ioc_file_hashes"], "r01", {**SINGLE_PROCESS, **(config or {})})
        assert result.success
        return [r[0][-1] for r in rows(sqlite_url, schema.ioc_file_hashes, "sha256")]

    assert loaded({"shard_dir": "{shard}"}) == [2]
    monkeypatch.setenv("TI_SAGE_SHARD_DIR", "cr-mongo-shard-{shard}.cybereason.net")
    assert loaded() == [1, 2]
    assert loaded({"shard_dir": "mongo-{shard}-copy"}) == [1, 2, 3]  # the run's config before the environment


@pytest.mark.parametrize(
    "template, message",
    [
        ("r01", "TI_SAGE_SHARD_DIR must hold {shard} exactly once and no other braces: 'r01'"),
        ("{shard}-{shard}", "TI_SAGE_SHARD_DIR must hold {shard} exactly once and no other braces: '{shard}-{shard}'"),
        ("{shard}-{0}", "TI_SAGE_SHARD_DIR must hold {shard} exactly once and no other braces: '{shard}-{0}'"),
        ("../{shard}", "TI_SAGE_SHARD_DIR '../{shard}' does not make a folder name for r01: "
                       "not a safe object-name segment: '../r01'"),
        ("a/{shard}", "TI_SAGE_SHARD_DIR 'a/{shard}' does not make a folder name for r01: "
                      "not a safe object-name segment: 'a/r01'"),
    ],
)
def test_an_unusable_template_fails_with_why(tmp_path, sqlite_url, template, message):
    store = LocalStore(tmp_path / "dump")
    write_dump_file(store, dump_name("r01", "file_rep"), iter([report(1)]))
    result = materialize_dump(store.uri, sqlite_url, ["ioc_file_hashes"], "r01", {**SINGLE_PROCESS, "shard_dir": template},
                              raise_on_error=False)
    assert not result.success
    assert failure_message(result) == message


def test_bson_and_bson_gz_side_by_side_reads_only_the_bson(dump_store, sqlite_url):
    plain, packed = dump_name("r05", "file_rep"), dump_name("r05", "file_rep", gz=True)
    write_dump_file(dump_store, plain, iter([report(1), report(2)]))
    write_dump_file(dump_store, packed, iter([report(3)]), gz=True)
    instance = DagsterInstance.ephemeral()
    result = materialize_dump(dump_store.uri, sqlite_url, ["ioc_file_hashes"], "r05", instance=instance)
    assert result.success
    meta = metadata_of(result, "ioc_file_hashes")
    assert (meta["read"], meta["written"], meta["files"]) == (2, 2, 1)
    assert (meta["files_read"], meta["files_ignored"]) == (dump_store.url_of(plain), dump_store.url_of(packed))
    assert [r[0][-1] for r in rows(sqlite_url, schema.ioc_file_hashes, "sha256")] == [1, 2]
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if "ignoring" in e.user_message]
    assert warnings == [f"both {dump_store.url_of(plain)} and {dump_store.url_of(packed)} exist: "
                        "reading the first, ignoring the second"]


def test_a_bson_gz_alone_is_read(dump_store, sqlite_url):
    write_dump_file(dump_store, dump_name("r02", "file_rep", gz=True), iter([report(5)]), gz=True)
    result = materialize_dump(dump_store.uri, sqlite_url, ["ioc_file_hashes"], "r02")
    assert result.success
    assert metadata_of(result, "ioc_file_hashes")["files_ignored"] == "none"
    assert rows(sqlite_url, schema.ioc_file_hashes, "sha256") == [(bytes.fromhex(f"{5:064x}"),)]


def test_missing_dump_file_fails_with_its_location(tmp_path, sqlite_url, monkeypatch):
    monkeypatch.delenv("TI_SAGE_SHARD_DIR", raising=False)
    store = LocalStore(tmp_path / "empty")
    result = materialize_dump(store.uri, sqlite_url, ["ioc_file_hashes"], "r06", raise_on_error=False)
    assert not result.success
    assert failure_message(result) == (
        f"no file_rep.bson(.gz) under {store.uri} for shard(s) r06 "
        "(looked in cr-mongo-shard-r06.cybereason.net/cybereason/, r06/cybereason/)"
    )


# ---- one bad record is one quarantine row; the partition goes on -------------------------------------

FUTURE = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S")
GOOD_REPORTS = [report(1), report(2, "2020-10-02 00:00:00")]
GOOD_TOKENS = [token("198.51.100.1", "IPv4"), token(" //Bad.Example", "DOMAIN", "whitelist;ANTI_VIRUS")]
GOOD_DOMAINS = [{"_id": "a.example", "response": "maliciousClassification=malware", "value": {}},
                {"_id": "b.example", "response": "maliciousClassification=whitelist", "value": {}}]
FILE_ROWS = [(bytes.fromhex(f"{1:064x}"), "MALWARE", 5, "E1:Mal.1"), (bytes.fromhex(f"{2:064x}"), "MALWARE", 5, "E1:Mal.2")]
TOKEN_ROWS = [("198.51.100.1", "IPV4", "malware", None), ("bad.example", "DOMAIN", "whitelist", "ANTI_VIRUS")]
DOMAIN_ROWS = [("a.example", "MALWARE", "SAGE_DUMP"), ("b.example", "WHITELIST", "SAGE_DUMP")]
# collection, asset keys, partition, good documents, table and columns, their rows
COLLECTIONS = {
    "file_rep": (["ioc_file_hashes"], "r01", GOOD_REPORTS, schema.ioc_file_hashes,
                 ("sha256", "classification", "positives", "detection_names"), FILE_ROWS),
    "TOKENS": (["ioc_tokens", "ioc_ips"], None, GOOD_TOKENS, schema.ioc_tokens,
               ("token", "token_type", "response", "subtype"), TOKEN_ROWS),
    "domain_classification": (["ioc_domains"], "r01", GOOD_DOMAINS, schema.ioc_domains,
                              ("domain", "classification", "source"), DOMAIN_ROWS),
}
BAD_RECORDS = {
    "positives-above-int32": ("file_rep", report(3, positives=2**31), "out_of_range:positives"),
    "total-abc": ("file_rep", report(3, total="abc"), "invalid_number:total"),
    "firstSeen-nan": ("file_rep", {**report(3), "firstSeen": float("nan")}, "invalid_timestamp:firstSeen"),
    "lastUpdate-inf": ("file_rep", {**report(3), "lastUpdate": float("inf")}, "invalid_timestamp:lastUpdate"),
    "lastUpdate-1e18": ("file_rep", {**report(3), "lastUpdate": 10**18}, "out_of_range:lastUpdate"),
    "scan_date-9999-99-99": ("file_rep", report(3, "9999-99-99 00:00:00"), "invalid_scan_date"),
    "scan_date-3-days-ahead": ("file_rep", report(3, FUTURE), "in_future:scan_date"),
    "unknown-classification": ("file_rep", report(3, response="foo.bar(1,1);NONE.null"), "unknown_classification"),
    "malicious_type-too-long": ("TOKENS", token("198.51.100.3", "IPv4", maliciousType="m" * 65),
                                "value_too_long:malicious_type"),
    "token-response-foo-SHELL": ("TOKENS", token("198.51.100.3", "IPv4", "foo;SHELL"), "unknown_classification"),
    "token-md5-16-chars": ("TOKENS", token("0123456789abcdef", "MD5"), "invalid_token_value:MD5"),
    "domain-classification-too-long": ("domain_classification", {"_id": "c.example", "value": {},
                                       "response": "maliciousClassification=" + "x" * 33}, "value_too_long:classification"),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_one_bad_record_is_quarantined_and_the_partition_goes_on(tmp_path, migrated_url, case):
    collection, bad, reason = BAD_RECORDS[case]
    keys, partition, good, table, columns, expected = COLLECTIONS[collection]
    store = LocalStore(tmp_path / "dump")
    store.write_bytes(dump_name("r01", collection), encode([good[0], bad, good[1]]))
    result = materialize_dump(store.uri, migrated_url, keys, partition)
    assert result.success
    meta = metadata_of(result, keys[0])
    assert balance(meta) == {"read": 3, "written": 2, "filtered": 0, "rejected": 1, "unaccounted": 0}
    assert meta[f"rejected.{reason}"] == 1
    assert rows(migrated_url, table, *columns) == expected
    assert quarantine(migrated_url) == [(f"sage_dump/{keys[0]}", partition or "all", len(bson.encode(good[0])), reason)]


@pytest.mark.parametrize("damage", ["truncated", "not-gzip"])
def test_a_damaged_bson_gz_keeps_the_documents_before_the_damage(tmp_path, migrated_url, damage):
    store = LocalStore(tmp_path / "dump")
    docs = [report(n) for n in range(1, 61)]
    data = encode(docs)
    if damage == "truncated":
        packed = gzip.compress(data, mtime=0)
        stored = packed[: len(packed) // 2]
        decoded = zlib.decompressobj(31).decompress(stored)
        kept = [n for n in range(1, 61) if len(encode(docs[:n])) <= len(decoded)]
        offset = len(encode(docs[: len(kept)]))
        reason = (f"truncated_gzip: the file ends inside a gzip member, at compressed byte {len(stored)} "
                  f"({len(decoded) - offset} bytes not readable)")
        assert 0 < len(kept) < 60
    else:
        stored, kept, offset = data, [], 0
        reason = f"not_gzip: no gzip magic bytes, at compressed byte 0 ({len(data)} bytes not readable)"
    store.write_bytes(dump_name("r05", "file_rep", gz=True), stored)
    result = materialize_dump(store.uri, migrated_url, ["ioc_file_hashes"], "r05")
    assert result.success
    meta = metadata_of(result, "ioc_file_hashes")
    assert balance(meta) == {"read": len(kept) + 1, "written": len(kept), "filtered": 0, "rejected": 1, "unaccounted": 0}
    assert meta[f"rejected.{reason.split(':')[0]}"] == 1
    assert [r[0][-1] for r in rows(migrated_url, schema.ioc_file_hashes, "sha256")] == kept
    assert quarantine(migrated_url) == [("sage_dump/ioc_file_hashes", "r05", offset, reason)]


# ---- classification and import policy ----------------------------------------------------------------


def verdict(doc: dict, classification: str) -> dict:
    return {**doc, "vtClassifierV2Classification": {"classification": classification, "algoVersion": "2.0"}}


POLICY_DOCS = [
    report(1),  # malware by its response
    verdict(report(2), "whitelist"),  # the ML verdict wins
    verdict(report(3, response="indifferent(-1.0,-1.0);NONE.null"), "ransomware"),
    report(4, response="unknown(-1.0,-1.0);NONE.null"),
    report(5, response="indifferent(-1.0,-1.0);NONE.null"),
    report(6, response="whitelist(-1.0,-1.0);NONE.null"),
    report(7, response="hacktool.generic(5.0,5.0);NONE.null"),
    {**report(8), "response": 42},  # no classification at all
    {"_id": "f" * 40, "response": "unknown(-1.0,-1.0);NONE.null", "value": {"response_code": 0}},
]


@pytest.mark.parametrize(
    "setting, expected, not_imported",
    [
        (None, [(1, "MALWARE"), (3, "RANSOMWARE"), (7, "HACKTOOL")], 5),
        ("ALL", [(1, "MALWARE"), (2, "WHITELIST"), (3, "RANSOMWARE"), (4, "UNKNOWN"), (5, "INDIFFERENT"),
                 (6, "WHITELIST"), (7, "HACKTOOL")], 1),
        ("whitelist, indifferent", [(2, "WHITELIST"), (5, "INDIFFERENT"), (6, "WHITELIST")], 5),
    ],
    ids=["default", "ALL", "chosen"],
)
def test_the_import_policy_decides_what_enters_ioc_file_hashes(tmp_path, migrated_url, setting, expected, not_imported):
    store = LocalStore(tmp_path / "dump")
    write_dump_file(store, dump_name("r06", "file_rep"), iter(POLICY_DOCS))
    result = materialize_dump(store.uri, migrated_url, ["ioc_file_hashes"], "r06", import_classifications=setting)
    assert result.success
    meta = metadata_of(result, "ioc_file_hashes")
    assert balance(meta) == {"read": 9, "written": len(expected), "filtered": not_imported + 1, "rejected": 0, "unaccounted": 0}
    assert (meta["filtered.classification_not_imported"], meta["filtered.response_code_not_1"]) == (not_imported, 1)
    policy = {None: PRODUCTION_SET, "ALL": ",".join(schema.FILE_CLASSIFICATIONS), "whitelist, indifferent": "INDIFFERENT,WHITELIST"}
    assert meta["import_classifications"] == policy[setting]
    assert [(r[0][-1], r[1]) for r in rows(migrated_url, schema.ioc_file_hashes, "sha256", "classification")] == expected


def test_an_unknown_policy_name_fails_the_step(tmp_path, sqlite_url):
    store = LocalStore(tmp_path / "dump")
    write_dump_file(store, dump_name("r01", "file_rep"), iter([report(1)]))
    result = materialize_dump(store.uri, sqlite_url, ["ioc_file_hashes"], "r01", import_classifications="MALWARE,EVIL",
                              raise_on_error=False)
    assert not result.success
    assert failure_message(result) == (
        "TI_IMPORT_CLASSIFICATIONS names EVIL, not classification values (one of "
        f"{', '.join(schema.FILE_CLASSIFICATIONS)}, or ALL)")


# ---- merging ------------------------------------------------------------------------------------------


def test_newest_scan_wins_whatever_the_shard_order(tmp_path, migrated_url):
    store = LocalStore(tmp_path / "dump")
    write_dump_file(store, dump_name("r01", "file_rep"), iter([report(7, "2020-01-01 00:00:00", positives=1)]))
    write_dump_file(store, dump_name("r02", "file_rep"), iter([report(7, "2020-06-01 00:00:00", positives=9)]))
    write_dump_file(store, dump_name("r03", "file_rep"), iter([report(7, "2020-03-01 00:00:00", positives=4)]))
    for shard in ("r02", "r01", "r03"):
        assert materialize_dump(store.uri, migrated_url, ["ioc_file_hashes"], shard).success
        assert rows(migrated_url, schema.ioc_file_hashes, "positives") == [(9,)]


@pytest.mark.parametrize("tokens_first", [True, False])
def test_domain_token_outranks_the_dump_in_either_order(tmp_path, migrated_url, tokens_first):
    store = LocalStore(tmp_path / "dump")
    write_dump_file(store, dump_name("r01", "domain_classification"), iter([
        {"_id": "shared.example.com", "response": "maliciousClassification=malware", "lastUpdate": 1600000000000,
         "value": {"detectedUrls": [{"positives": 3}]}},
        {"_id": "other.example.com", "response": "maliciousClassification=phishing", "value": {}},
    ]))
    write_dump_file(store, dump_name("r01", "TOKENS"), iter([
        TOKENS_HEADER,
        token("  .Shared.Example.com", "DOMAIN", "whitelist;ANTI_VIRUS"),
        token("203.0.113.9", "IPv4", "indifferent;SHELL"),
    ]))
    runs = [(["ioc_tokens", "ioc_ips"], None), (["ioc_domains"], "r01")]
    for keys, partition in runs if tokens_first else runs[::-1]:
        result = materialize_dump(store.uri, migrated_url, keys, partition)
        assert result.success
        if partition is None:
            meta = metadata_of(result, "ioc_tokens")
            assert balance(meta) == {"read": 3, "written": 2, "filtered": 1, "rejected": 0, "unaccounted": 0}
            assert meta["filtered.dataset_header"] == 1
            assert metadata_of(result, "ioc_ips")["files_read"] == store.url_of(dump_name("r01", "TOKENS"))
    assert rows(migrated_url, schema.ioc_domains, "domain", "classification", "source", "positives") == [
        ("other.example.com", "PHISHING", "SAGE_DUMP", None),
        ("shared.example.com", "WHITELIST", "TOKENS", None),
    ]
    assert rows(migrated_url, schema.ioc_ips, "address", "classification", "source") == [
        ("203.0.113.9", "INDIFFERENT", "TOKENS")]


# ---- the sample dump -------------------------------------------------------------------------------------


# Shards r01 (plain), r03 (ends in a torn document), r05 (gzipped) of the sample at 120 documents per
# shard, and the small collections, under the default import policy.
SAMPLE_ACCOUNTING = {
    ("ioc_file_hashes", 0): {"read": 120, "written": 7, "filtered": 111, "rejected": 2, "filtered.classification_not_imported": 13,
                             "filtered.response_code_not_1": 98, "rejected.invalid_sha256": 1, "rejected.missing_sha256": 1},
    ("ioc_domains", 0): {"read": 60, "written": 34, "filtered": 25, "rejected": 1, "filtered.indifferent_without_detections": 9,
                         "filtered.unknown": 16, "rejected.invalid_response": 1},
    ("ioc_file_hashes", 1): {"read": 120, "written": 8, "filtered": 109, "rejected": 3, "filtered.classification_not_imported": 8,
                             "filtered.response_code_not_1": 101, "rejected.invalid_sha256": 1, "rejected.missing_sha256": 1,
                             "rejected.torn_document": 1},
    ("ioc_domains", 1): {"read": 60, "written": 32, "filtered": 26, "rejected": 2, "filtered.indifferent_without_detections": 15,
                         "filtered.unknown": 11, "rejected.invalid_domain": 1, "rejected.invalid_response": 1},
    ("ioc_file_hashes", 2): {"read": 120, "written": 9, "filtered": 109, "rejected": 2, "filtered.classification_not_imported": 5,
                             "filtered.response_code_not_1": 104, "rejected.invalid_sha256": 1, "rejected.missing_sha256": 1},
    ("ioc_domains", 2): {"read": 60, "written": 29, "filtered": 30, "rejected": 1, "filtered.indifferent_without_detections": 7,
                         "filtered.unknown": 23, "rejected.invalid_response": 1},
    ("ioc_tokens", 3): {"read": 121, "written": 112, "filtered": 1, "rejected": 8, "filtered.dataset_header": 1,
                        "rejected.invalid_token_value:DOMAIN": 1, "rejected.invalid_token_value:IPV4": 1,
                        "rejected.invalid_token_value:MD5": 1, "rejected.invalid_token_value:SHA1": 1,
                        "rejected.unknown_token_type": 4},
    ("file_extension_classification", 3): {"read": 41, "written": 39, "filtered": 1, "rejected": 1, "filtered.dataset_header": 1,
                                           "rejected.missing_type": 1},
}
SAMPLE_COUNTS = {"ioc_file_hashes": 24, "ioc_domains": 108, "ioc_tokens": 112, "ioc_ips": 22, "file_extension_classification": 39}


def test_whole_sample_dump_fills_every_table_and_reconciles(tmp_path, migrated_url):
    store = LocalStore(tmp_path / "dump")
    write_sage_dump(store, docs_per_shard=120)
    results = [materialize_dump(store.uri, migrated_url, ["ioc_file_hashes", "ioc_domains"], shard) for shard in ("r01", "r03", "r05")]
    results.append(materialize_dump(store.uri, migrated_url, ["ioc_tokens", "ioc_ips", "file_extension_classification"]))
    for result in results:
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())
    accounting = {
        (name, i): {k: v for k, v in metadata_of(result, name).items() if k.split(".")[0] in ("read", "written", "filtered", "rejected")}
        for i, result in enumerate(results)
        for name in (["ioc_file_hashes", "ioc_domains"] if i < 3 else ["ioc_tokens", "file_extension_classification"])
    }
    assert accounting == SAMPLE_ACCOUNTING
    assert metadata_of(results[2], "ioc_file_hashes")["files_read"].endswith("r05.cybereason.net/cybereason/file_rep.bson.gz")
    engine = sa.create_engine(migrated_url)
    with engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one()  # noqa: S608 - fixed names
                  for t in ("ioc_file_hashes", "ioc_domains", "ioc_tokens", "ioc_ips", "file_extension_classification")}
    engine.dispose()
    assert counts == SAMPLE_COUNTS


def test_process_pool_gives_the_same_rows_as_one_process(tmp_path, sqlite_url):
    store = LocalStore(tmp_path / "dump")
    write_dump_file(store, dump_name("r04", "file_rep"), iter([report(i) for i in range(1, 300)]))
    assert materialize_dump(store.uri, sqlite_url, ["ioc_file_hashes"], "r04", {"workers": 2, "block_mib": 1}).success
    pooled = rows(sqlite_url, schema.ioc_file_hashes, "sha256", "detection_names")
    assert pooled == [(bytes.fromhex(f"{i:064x}"), f"E1:Mal.{i}") for i in sorted(range(1, 300), key=lambda i: f"{i:064x}")]
