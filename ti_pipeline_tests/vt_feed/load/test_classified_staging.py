"""The ``sql`` loader joins the Broccoli sidecar in process: each staged report row carries its
classification, no sidecar table is staged and the merge joins none; outcomes are those of the
sidecar-table join it replaced (SQLite and MariaDB)."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pytest
import sqlalchemy as sa

from ti_pipeline.core import schema, values
from ti_pipeline.core.exports import BROCCOLI_CLASSIFICATIONS
from ti_pipeline.vt_feed.load.merge import MergePlan
from ti_pipeline.vt_feed.load.sql import BroccoliLookup
from ti_pipeline_tests.vt_feed.load.conftest import EVERYTHING
from ti_pipeline_tests.vt_feed.load.exportdata import (
    classification,
    report,
    rows_by_sha256,
    sha1_of,
    sha256_of,
    write_day,
)

DAY_A, DAY_B = "2024-01-01", "2024-01-02"


def dt(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def sidecar_batch(rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=BROCCOLI_CLASSIFICATIONS).select(["sha1", "classification"])


def test_the_lookup_answers_per_sha1_like_the_keyed_sidecar_table():
    lookup = BroccoliLookup.build(
        [
            sidecar_batch([classification(3, "MALWARE"), classification(1, None, 404), classification(2, "BOGUS")]),
            # A repeated SHA1 keeps its first row, as the keyed sidecar table kept the first one staged.
            sidecar_batch([classification(3, "WHITELIST"), classification(1, "RANSOMWARE"), classification(4, "hacktool")]),
        ]
    )
    assert (lookup.distinct, len(lookup)) == (4, 1)
    asked = pa.array([sha1_of(3), None, sha1_of(1), sha1_of(2), sha1_of(4), sha1_of(9), sha1_of(3)], pa.binary(20))
    assert lookup.classify(asked).to_pylist() == ["MALWARE", None, None, None, None, None, "MALWARE"]
    # A SHA1 of another length (the server refuses such a row later) matches nothing.
    assert lookup.classify(pa.array([sha1_of(3) + b"\0", sha1_of(3)], pa.binary())).to_pylist() == [None, "MALWARE"]
    assert BroccoliLookup.build([]).classify(asked).null_count == len(asked)


def test_staged_rows_carry_their_classification_and_no_sidecar_table_is_staged(store, load, warehouse):
    write_day(
        store, DAY_A,
        [report(n, "2024-01-01 10:00:00") for n in range(5)],
        [classification(0, "RANSOMWARE"), classification(1, None, 404), classification(2, "WHITELIST"), classification(4, "MALTOOL")],
        parts=2,
    )
    staged: dict[bytes, str | None] = {}

    def look(event: str, index: int) -> None:
        if event == "merged_chunk" and not staged:
            tables = set(sa.inspect(warehouse.engine).get_table_names())
            assert "stage_vt_file_reports_20240101" in tables
            assert "stage_broccoli_20240101" not in tables
            table = schema.vt_classified_staging("20240101")
            with warehouse.engine.connect() as conn:
                staged.update({r.sha256: r.classification for r in conn.execute(sa.select(table.c.sha256, table.c.classification))})

    # Every row staged (no LOAD DATA: on MariaDB new rows would otherwise go straight into the target).
    result = load(DAY_A, on_event=look, load_data=False)
    assert staged == {
        sha256_of(0): "RANSOMWARE", sha256_of(1): None, sha256_of(2): "WHITELIST", sha256_of(3): None, sha256_of(4): "MALTOOL",
    }
    assert {k: v["classification"] for k, v in rows_by_sha256(warehouse).items()} == {
        sha256_of(0): "RANSOMWARE", sha256_of(4): "MALTOOL",
    }
    acc = result.accounting
    assert (acc.read, acc.written, acc.filtered["classification_not_imported"], acc.unaccounted) == (5, 2, 3, 0)
    assert (acc.figures["not_imported.UNKNOWN"], acc.figures["not_imported.WHITELIST"]) == (2, 1)
    assert (acc.figures["sidecar_rows_read"], acc.figures["sidecar_rows"], acc.figures["sidecar_classified"]) == (4, 4, 3)


def test_newest_scan_wins_across_days_with_the_classification_carried(store, load, warehouse):
    """Day B rescans files 0-3 (file 2's copy is older) and brings 4-5; its sidecar misses files 1 and 5."""
    write_day(
        store, DAY_A,
        [report(n, "2024-01-01 10:00:00", positives=3) for n in range(4)],
        [classification(n, c) for n, c in enumerate(["MALWARE", "HACKTOOL", "UNWANTED", None])],
    )
    write_day(
        store, DAY_B,
        [report(n, "2023-12-30 10:00:00" if n == 2 else "2024-01-02 10:00:00", positives=9) for n in range(6)],
        [classification(0, "RANSOMWARE"), classification(2, "SUSPICIOUS"), classification(3, "MALTOOL"), classification(4, "MALWARE")],
    )
    load(DAY_A, policy=EVERYTHING)
    acc = load(DAY_B, policy=EVERYTHING).accounting
    rows = rows_by_sha256(warehouse)
    got = {n: (rows[sha256_of(n)]["classification"], rows[sha256_of(n)]["positives"], rows[sha256_of(n)]["scan_date"]) for n in range(6)}
    newer, older = dt("2024-01-02 10:00:00"), dt("2024-01-01 10:00:00")
    assert got == {
        0: ("RANSOMWARE", 9, newer),  # newer scan: its classification replaces the stored one
        1: ("HACKTOOL", 9, newer),  # no sidecar row: the stored classification stays
        2: ("UNWANTED", 3, older),  # older copy: nothing of it wins
        3: ("MALTOOL", 9, newer),  # the stored UNKNOWN is filled
        4: ("MALWARE", 9, newer),
        5: ("UNKNOWN", 9, newer),  # new, no sidecar row
    }
    assert rows[sha256_of(2)]["first_seen"] == dt("2023-12-30 10:00:00")
    assert (acc.figures["inserted"], acc.figures["updated"], acc.figures["kept_older"], acc.unaccounted) == (2, 3, 1, 0)
    # Under the default policy day A leaves file 3 (UNKNOWN) out, so day B inserts it as MALTOOL, and
    # leaves out only the new unclassified file 5.
    with warehouse.engine.begin() as conn:
        conn.execute(schema.ioc_file_hashes.delete())
    load(DAY_A)
    acc = load(DAY_B).accounting
    assert {k: v["classification"] for k, v in rows_by_sha256(warehouse).items()} == {
        sha256_of(0): "RANSOMWARE", sha256_of(1): "HACKTOOL", sha256_of(2): "UNWANTED", sha256_of(3): "MALTOOL", sha256_of(4): "MALWARE",
    }
    assert (acc.figures["inserted"], acc.figures["updated"], acc.figures["kept_older"]) == (2, 2, 1)
    assert (acc.filtered["classification_not_imported"], acc.figures["not_imported.UNKNOWN"]) == (1, 1)
    assert (acc.figures["classification.MALTOOL"], acc.figures["classification.UNWANTED"]) == (1, 1)
    assert acc.unaccounted == 0


def test_only_the_tidb_tools_merge_joins_a_sidecar_table():
    reports, sidecar = schema.vt_load_staging("20240101")
    classified = schema.vt_classified_staging("20240101")
    admitted = tuple(values.PRODUCTION_CLASSIFICATIONS)
    with_sidecar = str(MergePlan(reports, sidecar, "mysql", admitted).merge_statement(None, None).compile(dialect=sa.dialects.mysql.dialect()))
    carried = str(MergePlan(classified, None, "mysql", admitted).merge_statement(None, None).compile(dialect=sa.dialects.mysql.dialect()))
    assert "stage_broccoli_20240101.sha1 = stage_vt_file_reports_20240101.sha1" in with_sidecar
    assert "stage_broccoli" not in carried
    assert "stage_vt_file_reports_20240101.classification" in carried
    assert [c.name for c in classified.columns] == [
        "sha256", "sha1", "md5", "positives", "total", "scan_date", "detection_names", "classification", "source",
    ]
    assert classified.name == reports.name


@pytest.mark.parametrize("warehouse_url", ["mysql"], indirect=True)
def test_a_day_left_staged_by_a_tidb_tool_is_dropped_by_the_sql_loader(store, load, warehouse):
    reports, sidecar = schema.vt_load_staging("20240101")
    with warehouse.engine.begin() as conn:
        reports.create(conn)
        sidecar.create(conn)
    write_day(store, DAY_A, [report(0, "2024-01-01 10:00:00")], [classification(0, "MALWARE")])
    assert load(DAY_A).accounting.written == 1
    assert {t for t in sa.inspect(warehouse.engine).get_table_names() if t.startswith("stage_")} == set()
