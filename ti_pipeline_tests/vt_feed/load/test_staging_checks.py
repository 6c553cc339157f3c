"""Nothing is cut silently on any loader path: rows no warehouse holds as they are are rejected up front
with their reason (SQLite and MariaDB alike), and on MariaDB a value that LOAD DATA LOCAL (implicitly
IGNORE) or an INSERT would clip or truncate is never stored cut: the batch is staged row by row and the
offending rows are quarantined with the server's message."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest
import sqlalchemy as sa

from ti_pipeline.core import schema
from ti_pipeline.core.exports import BROCCOLI_CLASSIFICATIONS
from ti_pipeline.vt_feed.load import sql
from ti_pipeline_tests.vt_feed.load.conftest import EVERYTHING
from ti_pipeline_tests.vt_feed.load.exportdata import (
    classification,
    md5_of,
    rows_by_sha256,
    sha1_of,
    sha256_of,
    write_partition,
)

DAY = "2024-01-01"
# The export schema, but with columns wide enough to hold what no warehouse column does.
WIDE = pa.schema(
    [
        pa.field("sha256", pa.binary(32)),
        pa.field("sha1", pa.binary()),
        pa.field("md5", pa.binary(16)),
        pa.field("positives", pa.int64()),
        pa.field("total", pa.int64()),
        pa.field("scan_date", pa.timestamp("us", tz="UTC")),
        pa.field("detection_names", pa.string()),
        pa.field("source_package", pa.string()),
    ]
)
T10_US = 1704103200 * 10**6  # 2024-01-01 10:00:00 UTC
YEAR_10000_US = 253402300800 * 10**6
YEAR_999_US = -30610224000 * 10**6 - 1  # 0999-12-31 23:59:59.999999
LONGEST = schema.TEXT_LIMITS["ioc_file_hashes"]["detection_names"].utf8_bytes


def good(n: int, **changes) -> dict:
    row = {
        "sha256": sha256_of(n), "sha1": sha1_of(n), "md5": md5_of(n), "positives": 5, "total": 70,
        "scan_date": T10_US, "detection_names": f"EngineA:Trojan.{n}", "source_package": "20240101T1000",
    }
    row.update(changes)
    return row


def write_wide_day(store, rows: list[dict]) -> None:
    write_partition(store, "vt_file_reports", DAY, rows, WIDE)
    write_partition(store, "broccoli_classifications", DAY, [classification(n, "MALWARE") for n in range(len(rows))], BROCCOLI_CLASSIFICATIONS)


def quarantined(warehouse) -> list[tuple[int, str]]:
    q = schema.quarantine
    with warehouse.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(q.c.byte_offset, q.c.reason).order_by(q.c.byte_offset))]


def test_rows_no_warehouse_holds_as_they_are_are_rejected_up_front_with_their_reason(store, load, warehouse):
    write_wide_day(
        store,
        [
            good(0),
            good(1, positives=2**31),
            good(2, total=-(2**31) - 1),
            good(3, scan_date=YEAR_10000_US),
            good(4, scan_date=YEAR_999_US),
            good(5, sha1=sha1_of(5) + b"\0"),
            good(6, detection_names="x" * (LONGEST + 1)),
            good(7, positives=None),
            good(8, detection_names="x" * LONGEST),
        ],
    )

    acc = load(DAY, batch_rows=4).accounting

    assert sorted(rows_by_sha256(warehouse)) == sorted([sha256_of(0), sha256_of(8)])
    assert len(rows_by_sha256(warehouse)[sha256_of(8)]["detection_names"]) == LONGEST  # the longest fits whole
    assert (acc.read, acc.written, acc.unaccounted) == (9, 2, 0)
    assert dict(acc.rejected) == {
        "out_of_range:positives": 1, "out_of_range:total": 1, "out_of_range:scan_date": 2, "invalid_sha1": 1,
        "value_too_long:detection_names": 1, "missing_positives": 1,
    }
    assert quarantined(warehouse) == [
        (1, "out_of_range:positives"), (2, "out_of_range:total"), (3, "out_of_range:scan_date"),
        (4, "out_of_range:scan_date"), (5, "invalid_sha1"), (6, "value_too_long:detection_names"), (7, "missing_positives"),
    ]


def test_a_clean_batch_costs_no_per_row_check():
    batch = pa.RecordBatch.from_pylist([good(0)], schema=WIDE)
    reports, _ = schema.vt_load_staging("20240101")
    assert sql.row_problems(batch, reports, sql.REQUIRED, sql.REPORT_TEXT_LIMITS) is None


@pytest.mark.parametrize("warehouse_url", ["mysql"], indirect=True)
@pytest.mark.parametrize("load_data", [True, False], ids=["load_data", "batched_insert"])
def test_a_value_the_server_would_change_is_quarantined_not_stored_cut(store, load, warehouse, monkeypatch, caplog, load_data):
    # As if the up-front checks missed them: what the server itself does with the values decides.
    monkeypatch.setattr(sql, "row_problems", lambda *args: None)
    write_wide_day(
        store,
        [good(0), good(1, positives=2**31), good(2, total=-(2**31) - 1), good(3, sha1=sha1_of(3) + b"\0"), good(4)],
    )

    # Every row admitted: file 3's SHA1 matches no sidecar row, and a new row the policy leaves out is
    # counted out in process, never sent to the server.
    with caplog.at_level(logging.WARNING, logger="test.load"):
        acc = load(DAY, load_data=load_data, batch_rows=10, policy=EVERYTHING).accounting

    rows = rows_by_sha256(warehouse)
    assert sorted(rows) == sorted([sha256_of(0), sha256_of(4)])
    assert [rows[sha256_of(n)]["positives"] for n in (0, 4)] == [5, 5]
    assert (acc.read, acc.written, dict(acc.rejected), acc.unaccounted) == (5, 2, {"refused_by_warehouse": 3}, 0)
    assert acc.figures["row_by_row_batches"] == 1
    assert quarantined(warehouse) == [
        (1, "refused_by_warehouse: Error 1264: Out of range value for column 'positives' at row 1"),
        (2, "refused_by_warehouse: Error 1264: Out of range value for column 'total' at row 1"),
        (3, "refused_by_warehouse: Error 1406: Data too long for column 'sha1' at row 1"),
    ]
    if load_data:
        assert "stage_vt_file_reports_20240101: the server changed values instead of refusing them (Warning 1264" in caplog.text
    else:
        assert "(1264, \"Out of range value for column" in caplog.text
