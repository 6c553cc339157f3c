"""The import policy on every loader: which final classifications enter ioc_file_hashes, and the accounting.

The lightning and import_into tools cannot run here: their runners are replaced by stand-ins that
import the Parquet files their task names, exactly as routed, so the stagers and the shared merge run
for real on MariaDB and the merge SQL they send is asserted as generated.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from ti_pipeline.core import schema, values
from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.vt_feed.load import LoadSettings, load_day
from ti_pipeline.vt_feed.load.merge import MergePlan, token_classification
from ti_pipeline.vt_feed.load.runner import RunResult
from ti_pipeline_tests.vt_feed.load.exportdata import (
    classification,
    report,
    rows_by_sha256,
    sha256_of,
    write_day,
)

DAY = "2024-01-01"
# One file per classification Broccoli can give, and one it did not classify (404).
CLASSES = [*schema.FILE_CLASSIFICATIONS, None]
PRODUCTION = set(values.PRODUCTION_CLASSIFICATIONS)
# The filter every merge carries (MySQL/TiDB form), with the default policy's classifications.
DEFAULT_FILTER = (
    "WHERE CASE WHEN (stored_row.sha256 IS NULL) THEN incoming.classification ELSE CASE WHEN (incoming.source = 'TOKENS') "
    "THEN incoming.classification WHEN (stored_row.source = 'TOKENS') THEN stored_row.classification "
    "WHEN (incoming.classification = 'UNKNOWN') THEN stored_row.classification "
    "WHEN (stored_row.scan_date IS NULL OR incoming.scan_date >= stored_row.scan_date OR stored_row.classification = 'UNKNOWN') "
    "THEN incoming.classification ELSE stored_row.classification END END "
    "IN ('RANSOMWARE', 'MALTOOL', 'HACKTOOL', 'UNWANTED', 'MALWARE', 'SUSPICIOUS', 'BLACKLIST', 'AV_DETECTED') "
    "ON DUPLICATE KEY UPDATE "
)
TOKEN_JOINS = (
    "LEFT OUTER JOIN ioc_tokens AS tok_sha256 ON tok_sha256.token = lower(hex(stage_vt_file_reports_20240101.sha256)) "
    "LEFT OUTER JOIN ioc_tokens AS tok_sha1 ON tok_sha1.token = lower(hex(stage_vt_file_reports_20240101.sha1)) "
    "LEFT OUTER JOIN ioc_tokens AS tok_md5 ON tok_md5.token = lower(hex(stage_vt_file_reports_20240101.md5))"
)


def write_every_class(store) -> None:
    write_day(
        store, DAY,
        [report(n, "2024-01-01 10:00:00") for n in range(len(CLASSES))],
        [classification(n, c, 200 if c else 404) for n, c in enumerate(CLASSES)],
        parts=2,
    )


def expected_rows(admitted: set[str]) -> dict[bytes, str]:
    return {sha256_of(n): c or "UNKNOWN" for n, c in enumerate(CLASSES) if (c or "UNKNOWN") in admitted}


def stored_classes(warehouse) -> dict[bytes, str]:
    return {k: v["classification"] for k, v in rows_by_sha256(warehouse).items()}


@pytest.mark.parametrize(
    ("setting", "admitted"),
    [
        (None, PRODUCTION),
        ("", PRODUCTION),
        ("MALWARE, whitelist", {"MALWARE", "WHITELIST"}),
        ("ALL", set(schema.FILE_CLASSIFICATIONS)),
        ("all", set(schema.FILE_CLASSIFICATIONS)),
    ],
)
def test_the_policy_decides_what_enters_and_the_rest_is_counted(store, load, warehouse, setting, admitted):
    write_every_class(store)

    result = load(DAY, policy=ImportPolicy.parse(setting))

    assert stored_classes(warehouse) == expected_rows(admitted)
    acc = result.accounting
    kept = len(expected_rows(admitted))
    assert (acc.read, acc.written, acc.filtered["classification_not_imported"], acc.rejected_total, acc.unaccounted) == (
        len(CLASSES), kept, len(CLASSES) - kept, 0, 0,
    )
    left_out = [c or "UNKNOWN" for c in CLASSES if (c or "UNKNOWN") not in admitted]
    assert {k: v for k, v in acc.figures.items() if k.startswith("not_imported.")} == {
        f"not_imported.{c}": left_out.count(c) for c in left_out
    }
    assert result.missing_after_merge == 0


def test_an_invalid_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"TI_IMPORT_CLASSIFICATIONS names BOGUS, not classification values \(one of RANSOMWARE, "):
        ImportPolicy.parse("MALWARE,BOGUS")


# Every word of the one table, and spellings classification_of reads the same (or not at all).
WORDS = [*values.CLASSIFICATION_WORDS, "Hack-Tool", "WHITELIST", "av-detected", "Pu_A", "mal ware", "coinminer", ""]


def test_token_words_map_in_sql_exactly_as_classification_of_maps_them(warehouse):
    with warehouse.engine.connect() as conn:
        got = {w: conn.execute(sa.select(token_classification(sa.literal(w, sa.String)))).scalar() for w in WORDS}
    assert got == {w: values.classification_of(w) for w in WORDS}
    assert (got["whitelist"], got["hacktool"], got["unwanted"], got["indifferent"]) == ("WHITELIST", "HACKTOOL", "UNWANTED", "INDIFFERENT")


def test_the_generated_merge_carries_the_policy_and_the_sha256_token_join():
    reports, sidecar = schema.vt_load_staging("20240101")
    plan = MergePlan(reports, sidecar, "mysql", tuple(reversed(values.PRODUCTION_CLASSIFICATIONS)))
    sql = str(plan.merge_statement(None, None).compile(dialect=sa.dialects.mysql.dialect()))
    assert DEFAULT_FILTER in sql
    assert TOKEN_JOINS in sql
    with pytest.raises(ValueError, match="BOGUS"):
        MergePlan(reports, sidecar, "mysql", ("MALWARE", "BOGUS"))


def _import_parquet(warehouse, table_name: str, files: list[Path]) -> int:
    """What the TiDB tools do with their task: the listed Parquet files into the staging table."""
    table = sa.Table(table_name, sa.MetaData(), autoload_with=warehouse.engine)
    rows = []
    for path in files:
        for row in pq.read_table(path).to_pylist():
            rows.append({k: v.replace(tzinfo=None) if hasattr(v, "tzinfo") else v for k, v in row.items()})
    if rows:
        with warehouse.engine.begin() as conn:
            conn.execute(table.insert(), rows)
    return len(rows)


@pytest.mark.parametrize("warehouse_url", ["mysql"], indirect=True)
@pytest.mark.parametrize("loader", ["lightning", "import_into"])
def test_the_tidb_loaders_merge_through_the_same_policy(store, warehouse, monkeypatch, tmp_path, loader):
    from ti_pipeline.vt_feed.load import import_into, lightning

    def fake_import_job(execute, statement, **kwargs):
        match = re.fullmatch(r"IMPORT INTO `[^`]+`\.`([^`]+)` FROM '(.*)/\*\.parquet' FORMAT 'parquet' WITH DETACHED", statement)
        return {"Imported_Rows": _import_parquet(warehouse, match.group(1), sorted(Path(match.group(2)).glob("*.parquet")))}

    def fake_lightning(argv, **kwargs):
        config = tomllib.loads(Path(argv[argv.index("--config") + 1]).read_text())
        route = config["mydumper"]["files"][0]
        folder = Path(config["mydumper"]["data-source-dir"])
        _import_parquet(warehouse, route["table"], [p for p in sorted(folder.iterdir()) if re.match(route["pattern"], p.name)])
        return RunResult(0, 1, None)

    monkeypatch.setattr(import_into, "run_import_job", fake_import_job)
    monkeypatch.setattr(lightning, "run_streaming", fake_lightning)
    sent: list[str] = []
    sa.event.listen(warehouse.engine, "before_cursor_execute", lambda conn, cursor, statement, *a: sent.append(statement))
    write_every_class(store)

    result = load_day(
        warehouse, store, DAY,
        LoadSettings(loader=loader, merge_chunk_rows=5, sorted_kv_dir=str(tmp_path / "kv"), work_dir=str(tmp_path / "work")),
        log=logging.getLogger("test.policy"), quarantine=lambda records: None,
    )

    assert stored_classes(warehouse) == expected_rows(PRODUCTION)
    acc = result.accounting
    assert (acc.read, acc.written, acc.filtered["classification_not_imported"], acc.unaccounted) == (12, 8, 4, 0)
    merges = [s for s in sent if s.startswith("INSERT INTO ioc_file_hashes")]
    assert len(merges) == acc.figures["merge_chunks"] == 3
    assert all(DEFAULT_FILTER in s and TOKEN_JOINS in s for s in merges)
