"""The catalog: every asset of the code location carries its column schema (from the one schema), storage
kinds, owners, a description and a code reference; accounting and samples are tables."""

import re
from collections import Counter

import pytest
from dagster import AssetKey, Definitions, TableColumn, TableRecord, TableSchema, asset

from ti_pipeline.core import exports, schema
from ti_pipeline.core.accounting import Accounting
from ti_pipeline.definitions import defs
from ti_pipeline.defs.metadata import (
    EXPORT_KINDS,
    OWNERS,
    TABLE_KINDS,
    accounting_metadata,
    bar_chart,
    column_schema,
    sample_table,
    with_code_references,
)

# What each asset is: a warehouse table of core/schema.py or a Parquet export of core/exports.py.
SOURCES = {
    "sage_dump/ioc_file_hashes": schema.ioc_file_hashes,
    "sage_dump/ioc_domains": schema.ioc_domains,
    "sage_dump/ioc_tokens": schema.ioc_tokens,
    "sage_dump/ioc_ips": schema.ioc_ips,
    "sage_dump/file_extension_classification": schema.file_extension_classification,
    "vt_feed/vt_file_reports": exports.VT_FILE_REPORTS,
    "vt_feed/broccoli_classifications": exports.BROCCOLI_CLASSIFICATIONS,
    "vt_feed/ioc_file_hashes": schema.ioc_file_hashes,
    "threat_actors/threat_actors": schema.threat_actors,
    "threat_actors/malware_families": schema.malware_families,
    "threat_actors/actor_techniques": schema.actor_techniques,
    "submissions/customer_ioc": schema.customer_ioc,
}


@pytest.fixture(scope="module")
def nodes():
    return {n.key.to_user_string(): n for n in defs.resolve_asset_graph().asset_nodes}


def test_every_asset_has_the_column_schema_of_its_table_or_export(nodes):
    assert nodes.keys() == SOURCES.keys()
    for name, node in nodes.items():
        source = SOURCES[name]
        shown = node.metadata["dagster/column_schema"].schema
        assert shown == column_schema(source), name
        names = [c.name for c in source.columns] if isinstance(source, type(schema.quarantine)) else source.names
        assert [c.name for c in shown.columns] == names, name
        if isinstance(source, type(schema.quarantine)):
            assert node.metadata["dagster/table_name"] == source.name


def test_column_schema_states_types_nullability_and_keys():
    hashes = {c.name: c for c in column_schema(schema.ioc_file_hashes).columns}
    assert (hashes["sha256"].type, hashes["sha256"].constraints.nullable, hashes["sha256"].constraints.unique) == \
        ("BINARY(32)", False, True)
    assert hashes["sha256"].constraints.other == ["primary key"]
    assert hashes["sha1"].constraints.other == ["indexed (ix_ioc_file_hashes_sha1)"]
    assert (hashes["detection_names"].type, hashes["detection_names"].constraints.nullable) == ("MEDIUMTEXT", True)
    assert hashes["classification"].type.startswith("ENUM('RANSOMWARE',")
    assert hashes["created_at"].constraints.other == ["default CURRENT_TIMESTAMP"]
    assert column_schema(schema.ioc_file_hashes).constraints.other == [
        "an incoming row replaces the stored one only when its scan_date is not older"]
    customer = {c.name: c for c in column_schema(schema.customer_ioc).columns}
    assert customer["org_id"].constraints.other == ["part of the primary key (org_id, ioc_type, value)"]
    assert customer["org_id"].constraints.unique is False
    reports = {c.name: c for c in column_schema(exports.VT_FILE_REPORTS).columns}
    assert (reports["sha256"].type, reports["sha256"].constraints.nullable) == ("fixed_size_binary[32]", False)
    assert (reports["scan_date"].type, reports["total"].constraints.nullable) == ("timestamp[us, tz=UTC]", True)


def test_kinds_owners_descriptions_and_code_references(nodes):
    for name, node in nodes.items():
        exported = isinstance(SOURCES[name], type(exports.VT_FILE_REPORTS))
        assert node.kinds == (EXPORT_KINDS if exported else TABLE_KINDS), name
        assert node.owners == OWNERS, name
        assert node.description, name
        (reference,) = node.metadata["dagster/code_references"].code_references
        module = name.split("/")[0]
        assert f"ti_pipeline/defs/{module}" in reference.file_path and reference.line_number > 0, name
    assert {"tidb", "parquet", "gcs"} <= set().union(*(n.kinds for n in nodes.values()))
    assert "sql" not in set().union(*(n.kinds for n in nodes.values()))


def test_code_references_link_to_the_repository(monkeypatch):
    @asset(key=AssetKey(["x", "y"]))
    def y():
        return None

    monkeypatch.setenv("TI_CODE_REPOSITORY_URL", "https://github.com/example/ti_pipeline")
    monkeypatch.setenv("TI_CODE_REPOSITORY_BRANCH", "v1.2")
    monkeypatch.setenv("TI_CODE_REPOSITORY_PATH", "pipelines/ti")
    linked = with_code_references(Definitions(assets=[y]))
    (node,) = linked.resolve_asset_graph().asset_nodes
    (reference,) = node.metadata["dagster/code_references"].code_references
    assert re.fullmatch(
        r"https://github\.com/example/ti_pipeline/tree/v1\.2/pipelines/ti/ti_pipeline_tests/defs/test_catalog\.py#L\d+",
        reference.url,
    ), reference.url


def test_accounting_and_charts_are_tables():
    acc = Accounting(read=6, written=2)
    acc.filter("response_code_not_1")
    acc.reject("torn_document", 3)
    acc.figures["classification.MALWARE"] = 2
    meta = accounting_metadata(acc)
    counts = acc.as_dict()
    assert meta["accounting"].schema == TableSchema([TableColumn("count"), TableColumn("records", "int")])
    assert meta["accounting"].records == [TableRecord({"count": k, "records": v}) for k, v in counts.items()]
    assert meta["where_records_went"].records == [
        TableRecord({"outcome": "written", "count": 2, "bar": "█" * 27}),
        TableRecord({"outcome": "filtered: response_code_not_1", "count": 1, "bar": "█" * 13}),
        TableRecord({"outcome": "rejected: torn_document", "count": 3, "bar": "█" * 40}),
    ]
    assert meta["classification_mix"].records == [TableRecord({"classification": "MALWARE", "count": 2, "bar": "█" * 40})]
    assert bar_chart(Counter(), "x").records == []


def test_sample_rows_are_a_typed_table():
    row = {"sha256": bytes(range(32)), "positives": 5, "scan_date": None, "detection_names": "E" * 100}
    table = sample_table([row], schema.ioc_file_hashes)
    assert [(c.name, c.type) for c in table.schema.columns] == [
        ("sha256", "BINARY(32)"), ("positives", "INTEGER"), ("scan_date", "DATETIME"), ("detection_names", "MEDIUMTEXT")]
    assert table.records == [TableRecord(
        {"sha256": bytes(range(32)).hex(), "positives": 5, "scan_date": None, "detection_names": "E" * 77 + "..."})]
    assert sample_table([]).records == []
