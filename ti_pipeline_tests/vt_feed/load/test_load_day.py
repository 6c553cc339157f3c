"""The VT day load on SQLite and MariaDB: merge rule, classification, tokens, accounting, faults."""

from __future__ import annotations

import logging
from datetime import datetime

import pyarrow as pa
import pytest
import sqlalchemy as sa

from ti_pipeline.core import schema
from ti_pipeline.core.exports import BROCCOLI_CLASSIFICATIONS, VT_FILE_REPORTS, part_name, success_name
from ti_pipeline.vt_feed.load import IncompleteExport
from ti_pipeline_tests.vt_feed.load.conftest import EVERYTHING
from ti_pipeline_tests.vt_feed.load.exportdata import (
    classification,
    md5_of,
    report,
    rows_by_sha256,
    sha1_of,
    sha256_of,
    snapshot,
    write_day,
    write_partition,
)

DAY_A, DAY_B, DAY_C = "2024-01-01", "2024-01-02", "2024-01-03"


def dt(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def write_two_days(store) -> None:
    """A: files 0-5 scanned on Jan 1. B: files 3-8 rescanned on Jan 2, except file 4 whose copy is stale."""
    write_day(
        store, DAY_A,
        [report(n, "2024-01-01 10:00:00", positives=3) for n in range(6)],
        [classification(n, "MALWARE") for n in range(6)],
        parts=2,
    )
    write_day(
        store, DAY_B,
        [report(n, "2023-12-31 09:00:00" if n == 4 else "2024-01-02 10:00:00", positives=9) for n in range(3, 9)],
        [classification(n, "MALWARE") for n in range(3, 9)],
    )


def test_first_load_inserts_every_row_with_its_sidecar_classification(store, load, warehouse):
    write_day(
        store, DAY_A,
        [report(n, "2024-01-01 10:00:00", positives=n + 1, total=70) for n in range(4)],
        [classification(0, "RANSOMWARE"), classification(1, None, 404), classification(2, "MALTOOL")],
    )
    result = load(DAY_A, policy=EVERYTHING)
    rows = rows_by_sha256(warehouse)
    assert sorted(rows) == sorted(sha256_of(n) for n in range(4))
    first = rows[sha256_of(0)]
    assert (first["sha1"], first["md5"]) == (sha1_of(0), md5_of(0))
    assert (first["classification"], first["source"]) == ("RANSOMWARE", "VIRUS_TOTAL")
    assert (first["positives"], first["total"]) == (1, 70)
    assert first["detection_names"] == 'EngineA:Trojan.0;EngineB:Gen\t"0"'
    assert first["scan_date"] == first["first_seen"] == first["last_seen"] == dt("2024-01-01 10:00:00")
    # 404 and no sidecar row: nothing to keep, so UNKNOWN.
    assert [rows[sha256_of(n)]["classification"] for n in (1, 2, 3)] == ["UNKNOWN", "MALTOOL", "UNKNOWN"]
    acc = result.accounting
    assert (acc.read, acc.written, acc.unaccounted) == (4, 4, 0)
    assert (acc.figures["inserted"], acc.figures["updated"], acc.figures["kept_older"]) == (4, 0, 0)
    assert result.missing_after_merge == 0
    # Staging tables are dropped once merged.
    assert {t for t in sa.inspect(warehouse.engine).get_table_names() if t.startswith("stage_")} == set()


def test_by_default_rows_without_a_threat_classification_are_filtered_not_merged(store, load, warehouse):
    write_day(
        store, DAY_A,
        [report(n, "2024-01-01 10:00:00") for n in range(4)],
        [classification(0, "RANSOMWARE"), classification(1, None, 404), classification(2, "MALTOOL")],
    )
    result = load(DAY_A)
    assert {k: v["classification"] for k, v in rows_by_sha256(warehouse).items()} == {
        sha256_of(0): "RANSOMWARE", sha256_of(2): "MALTOOL",
    }
    acc = result.accounting
    assert (acc.read, acc.written, dict(acc.filtered), acc.rejected_total, acc.unaccounted) == (
        4, 2, {"classification_not_imported": 2, "newer_scan_already_stored": 0}, 0, 0,
    )
    assert {k: v for k, v in acc.figures.items() if k.startswith(("classification.", "not_imported."))} == {
        "classification.RANSOMWARE": 1, "classification.MALTOOL": 1, "not_imported.UNKNOWN": 2,
    }
    assert result.missing_after_merge == 0


def test_newer_scan_wins_and_accounting_says_what_happened(store, load, warehouse):
    write_two_days(store)
    load(DAY_A)
    result = load(DAY_B)
    acc = result.accounting
    assert (acc.figures["inserted"], acc.figures["updated"], acc.figures["reapplied"], acc.figures["kept_older"]) == (3, 2, 0, 1)
    assert (acc.read, acc.written, acc.filtered["newer_scan_already_stored"], acc.unaccounted) == (6, 5, 1, 0)
    rows = rows_by_sha256(warehouse)
    assert rows[sha256_of(3)]["scan_date"] == dt("2024-01-02 10:00:00")
    assert rows[sha256_of(3)]["positives"] == 9
    assert rows[sha256_of(3)]["first_seen"] == dt("2024-01-01 10:00:00")
    # The stale copy of file 4 changed nothing but first_seen.
    assert rows[sha256_of(4)]["scan_date"] == dt("2024-01-01 10:00:00")
    assert rows[sha256_of(4)]["positives"] == 3
    assert rows[sha256_of(4)]["first_seen"] == dt("2023-12-31 09:00:00")
    assert rows[sha256_of(4)]["last_seen"] == dt("2024-01-01 10:00:00")
    again = load(DAY_B).accounting
    assert (again.figures["inserted"], again.figures["updated"], again.figures["reapplied"], again.figures["kept_older"]) == (0, 0, 5, 1)


def test_days_in_any_order_or_twice_end_in_the_same_table(store, load, warehouse):
    write_two_days(store)
    tables = []
    for order in ([DAY_A, DAY_B], [DAY_B, DAY_A], [DAY_B, DAY_A, DAY_B, DAY_A]):
        with warehouse.engine.begin() as conn:
            conn.execute(schema.ioc_file_hashes.delete())
        for day in order:
            load(day)
        tables.append(snapshot(warehouse))
    assert len(tables[0]) == 9
    assert tables[0] == tables[1] == tables[2]


def _store_hacktool_row(warehouse) -> None:
    warehouse.upsert(
        schema.ioc_file_hashes,
        [
            {
                "sha256": sha256_of(1), "sha1": sha1_of(1), "md5": md5_of(1), "classification": "HACKTOOL",
                "source": "SAGE_DUMP", "detection_names": None, "scan_date": dt("2020-10-01 00:00:00"),
                "positives": 1, "total": 50, "first_seen": dt("2019-05-01 00:00:00"), "last_seen": dt("2020-10-01 00:00:00"),
            }
        ],
        schema.MERGE_RULES["ioc_file_hashes"],  # as the dump load stores it
    )


def test_broccoli_without_a_classification_keeps_the_stored_one(store, load, warehouse):
    _store_hacktool_row(warehouse)
    write_day(
        store, DAY_B,
        [report(n, "2024-01-02 10:00:00") for n in (1, 2, 3)],
        [classification(1, None, 404), classification(2, "BOGUS"), classification(3, None, 404)],
    )
    # An older day whose Broccoli lookup did classify file 3.
    write_day(store, DAY_A, [report(3, "2024-01-01 10:00:00")], [classification(3, "UNWANTED")])
    load(DAY_B, policy=EVERYTHING)
    rows = rows_by_sha256(warehouse)
    assert (rows[sha256_of(1)]["classification"], rows[sha256_of(1)]["source"]) == ("HACKTOOL", "VIRUS_TOTAL")
    assert rows[sha256_of(1)]["scan_date"] == dt("2024-01-02 10:00:00")
    assert rows[sha256_of(1)]["first_seen"] == dt("2019-05-01 00:00:00")
    assert rows[sha256_of(2)]["classification"] == "UNKNOWN"  # not an enum value: treated as none
    assert rows[sha256_of(3)]["classification"] == "UNKNOWN"
    result = load(DAY_A, policy=EVERYTHING)
    assert result.accounting.figures["kept_older"] == 1
    row = rows_by_sha256(warehouse)[sha256_of(3)]
    assert (row["classification"], row["scan_date"]) == ("UNWANTED", dt("2024-01-02 10:00:00"))


def test_the_policy_judges_the_classification_a_row_ends_with(store, load, warehouse):
    """A stored HACKTOOL row takes a newer scan that Broccoli did not classify (it stays HACKTOOL, which
    the default policy admits); new rows without a classification stay out."""
    _store_hacktool_row(warehouse)
    write_day(
        store, DAY_B,
        [report(n, "2024-01-02 10:00:00") for n in (1, 2, 3)],
        [classification(1, None, 404), classification(2, "BOGUS"), classification(3, None, 404)],
    )
    acc = load(DAY_B).accounting
    rows = rows_by_sha256(warehouse)
    assert sorted(rows) == [sha256_of(1)]
    assert (rows[sha256_of(1)]["classification"], rows[sha256_of(1)]["scan_date"]) == ("HACKTOOL", dt("2024-01-02 10:00:00"))
    assert (acc.read, acc.written, acc.filtered["classification_not_imported"], acc.unaccounted) == (3, 1, 2, 0)
    assert (acc.figures["updated"], acc.figures["classification.HACKTOOL"], acc.figures["not_imported.UNKNOWN"]) == (1, 1, 2)


def _tokens(warehouse) -> None:
    """Curated tokens of every digest kind; their words mapped as ``values.classification_of`` maps them."""
    with warehouse.engine.begin() as conn:
        conn.execute(
            schema.ioc_tokens.insert(),
            [
                {"token": sha1_of(1).hex(), "token_type": "SHA1", "response": "whitelist"},
                {"token": md5_of(2).hex(), "token_type": "MD5", "response": "ransomware"},
                {"token": sha256_of(5).hex(), "token_type": "SHA256", "response": "hacktool"},
                {"token": sha256_of(6).hex(), "token_type": "SHA256", "response": "Unwanted"},
                {"token": sha1_of(7).hex(), "token_type": "SHA1", "response": "indifferent"},
                # Two tokens for file 8: the SHA256 one is the most specific and decides.
                {"token": sha256_of(8).hex(), "token_type": "SHA256", "response": "malware"},
                {"token": sha1_of(8).hex(), "token_type": "SHA1", "response": "whitelist"},
            ],
        )
    warehouse.upsert(
        schema.ioc_file_hashes,
        [
            {
                "sha256": sha256_of(3), "sha1": sha1_of(3), "md5": md5_of(3), "classification": "MALWARE",
                "source": "TOKENS", "detection_names": None, "scan_date": dt("2021-01-01 00:00:00"),
                "positives": 2, "total": 60, "first_seen": None, "last_seen": None,
            }
        ],
    )


TOKEN_ROWS = {
    1: ("WHITELIST", "TOKENS"),
    2: ("RANSOMWARE", "TOKENS"),
    3: ("MALWARE", "TOKENS"),
    4: ("UNWANTED", "VIRUS_TOTAL"),
    5: ("HACKTOOL", "TOKENS"),
    6: ("UNWANTED", "TOKENS"),
    7: ("INDIFFERENT", "TOKENS"),
    8: ("MALWARE", "TOKENS"),
}


@pytest.mark.parametrize("policy", ["ALL", "default"])
def test_curated_tokens_outrank_the_feed(store, load, warehouse, policy):
    _tokens(warehouse)
    files = sorted(TOKEN_ROWS)
    write_day(store, DAY_A, [report(n, "2024-01-01 10:00:00") for n in files], [classification(n, "UNWANTED") for n in files])
    result = load(DAY_A, policy=EVERYTHING if policy == "ALL" else None)
    rows = rows_by_sha256(warehouse)
    got = {n: (rows[sha256_of(n)]["classification"], rows[sha256_of(n)]["source"]) for n in files if sha256_of(n) in rows}
    acc = result.accounting
    if policy == "ALL":
        assert got == TOKEN_ROWS
        assert acc.filtered["classification_not_imported"] == 0
    else:  # whitelist and indifferent tokens keep their files out of the table
        assert got == {n: v for n, v in TOKEN_ROWS.items() if n not in (1, 7)}
        assert acc.filtered["classification_not_imported"] == 2
        assert (acc.figures["not_imported.WHITELIST"], acc.figures["not_imported.INDIFFERENT"]) == (1, 1)
    # The token row still takes the newer scan data.
    assert rows[sha256_of(3)]["scan_date"] == dt("2024-01-01 10:00:00")
    assert acc.figures["token_rows"] == len([v for v in got.values() if v[1] == "TOKENS"])  # the day's rows under a token
    assert acc.unaccounted == 0


def test_unusable_rows_are_quarantined_and_duplicates_counted(store, load, warehouse):
    relaxed = pa.schema([f.with_nullable(True) for f in VT_FILE_REPORTS])
    bad_date = {**report(1, "2024-01-01 10:00:00"), "scan_date": None}
    bad_key = {**report(2, "2024-01-01 10:00:00"), "sha256": None}
    rows = [report(0, "2024-01-01 10:00:00"), bad_date, bad_key, report(3, "2024-01-01 10:00:00"), report(3, "2024-01-01 11:00:00")]
    write_partition(store, "vt_file_reports", DAY_A, rows, relaxed)
    write_partition(store, "broccoli_classifications", DAY_A, [], BROCCOLI_CLASSIFICATIONS)
    acc = load(DAY_A, policy=EVERYTHING).accounting
    assert (acc.read, acc.written, acc.unaccounted) == (5, 2, 0)
    assert dict(acc.rejected) == {"missing_scan_date": 1, "missing_sha256": 1, "duplicate_sha256_in_export": 1}
    with warehouse.engine.connect() as conn:
        quarantined = conn.execute(
            sa.select(schema.quarantine.c.reason, schema.quarantine.c.byte_offset, schema.quarantine.c.source)
            .order_by(schema.quarantine.c.byte_offset)
        ).all()
    assert [(r.reason, r.byte_offset) for r in quarantined] == [("missing_scan_date", 1), ("missing_sha256", 2)]
    assert quarantined[0].source == store.url_of(part_name("vt_file_reports", DAY_A, 0))
    assert sorted(rows_by_sha256(warehouse)) == sorted([sha256_of(0), sha256_of(3)])


def test_incomplete_exports_are_never_loaded(store, load, warehouse):
    write_partition(store, "vt_file_reports", DAY_A, [report(0, "2024-01-01 10:00:00")], VT_FILE_REPORTS)
    store.delete(success_name("vt_file_reports", DAY_A))
    with pytest.raises(IncompleteExport, match="vt_file_reports/date=2024-01-01/_SUCCESS does not exist"):
        load(DAY_A)
    write_partition(store, "vt_file_reports", DAY_A, [report(0, "2024-01-01 10:00:00")], VT_FILE_REPORTS)
    with pytest.raises(IncompleteExport, match="broccoli_classifications/date=2024-01-01/_SUCCESS does not exist"):
        load(DAY_A)
    write_partition(store, "broccoli_classifications", DAY_A, [], BROCCOLI_CLASSIFICATIONS)
    # A part rewritten after its manifest (a re-export under way) is not read.
    store.write_bytes(part_name("vt_file_reports", DAY_A, 0), b"not yet")
    with pytest.raises(IncompleteExport, match="changed since its manifest was written"):
        load(DAY_A)
    assert rows_by_sha256(warehouse) == {}


def test_only_the_parts_the_manifest_lists_are_read(store, load, warehouse):
    write_day(store, DAY_A, [report(0, "2024-01-01 10:00:00")], [])
    # A part left by an export that never finished (its manifest would have listed it).
    write_partition(store, "vt_file_reports", DAY_B, [report(9, "2024-01-01 10:00:00")], VT_FILE_REPORTS)
    store.write_bytes(part_name("vt_file_reports", DAY_A, 7), store.read_bytes(part_name("vt_file_reports", DAY_B, 0)))
    assert load(DAY_A, policy=EVERYTHING).accounting.read == 1
    assert sorted(rows_by_sha256(warehouse)) == [sha256_of(0)]


class Killed(Exception):
    """Stands for the process dying at that point."""


@pytest.mark.parametrize("kill_at", [("staged_batch", 1), ("merged_chunk", 0)])
def test_a_killed_load_and_its_rerun_end_in_the_same_table(store, load, warehouse, kill_at):
    write_two_days(store)
    load(DAY_A)
    load(DAY_B)
    expected = snapshot(warehouse)
    with warehouse.engine.begin() as conn:
        conn.execute(schema.ioc_file_hashes.delete())
    load(DAY_A)

    def die(event: str, index: int) -> None:
        if (event, index) == kill_at:
            raise Killed(f"{event} {index}")

    with pytest.raises(Killed):
        load(DAY_B, on_event=die)
    result = load(DAY_B)
    assert snapshot(warehouse) == expected
    assert result.accounting.unaccounted == 0


def _kill_other_connections(mysql_url: str) -> int:
    """KILL every other session on the test's database, as a server restart or proxy would."""
    engine = sa.create_engine(mysql_url)
    database = sa.engine.make_url(mysql_url).database
    with engine.connect() as conn:
        ids = conn.execute(
            sa.text("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = :db AND ID <> CONNECTION_ID()"),
            {"db": database},
        ).scalars().all()
        for session in ids:
            conn.execute(sa.text(f"KILL {int(session)}"))
    engine.dispose()
    return len(ids)


@pytest.mark.parametrize("warehouse_url", ["mysql"], indirect=True)
def test_a_dropped_connection_is_retried_from_the_failed_batch(store, load, warehouse, warehouse_url):
    write_two_days(store)
    killed = []

    def drop_connections(event: str, index: int) -> None:
        if (event, index) in (("staged_batch", 0), ("merged_chunk", 0)):
            killed.append(_kill_other_connections(warehouse_url))

    load(DAY_A, on_event=drop_connections)
    result = load(DAY_B)
    assert killed[0] >= 1
    acc = result.accounting
    assert (acc.figures["inserted"], acc.figures["updated"], acc.figures["kept_older"], acc.unaccounted) == (3, 2, 1, 0)
    assert len(snapshot(warehouse)) == 9
    first = load(DAY_A).accounting
    assert first.figures["reapplied"] + first.figures["kept_older"] == 6


@pytest.mark.parametrize("warehouse_url", ["mysql"], indirect=True)
def test_staging_counts_a_retry_only_for_the_batch_that_failed(store, load, warehouse, warehouse_url):
    write_day(store, DAY_A, [report(n, "2024-01-01 10:00:00") for n in range(9)], [])

    def drop_after_first(event: str, index: int) -> None:
        if (event, index) == ("staged_batch", 0):
            _kill_other_connections(warehouse_url)

    acc = load(DAY_A, on_event=drop_after_first, policy=EVERYTHING).accounting
    # 3 batches of 3 rows; the second failed once on the dead connection and was sent again.
    assert (acc.figures["staged_batches"], acc.figures["load_data_batches"], acc.figures["retries"]) == (3, 3, 1)
    assert (acc.figures["inserted"], acc.unaccounted) == (9, 0)


@pytest.mark.parametrize("warehouse_url", ["mysql"], indirect=True)
def test_a_server_refusing_local_infile_gets_batched_inserts(store, load, warehouse_url, caplog):
    from ti_pipeline.core.warehouse import Warehouse

    refusing = Warehouse(warehouse_url.replace("local_infile=1", "local_infile=0"))
    refusing.ensure_schema()
    write_two_days(store)
    from ti_pipeline.vt_feed.load import LoadSettings, load_day

    log = logging.getLogger("test.fallback")
    with caplog.at_level(logging.WARNING, logger="test.fallback"):
        result = load_day(refusing, store, DAY_A, LoadSettings(batch_rows=3), log=log, quarantine=lambda r: None)
    refusing.dispose()
    assert "refused LOAD DATA LOCAL INFILE" in caplog.text
    assert result.accounting.figures["load_data_batches"] == 0
    assert result.accounting.figures["insert_batches"] == 2  # 2 report batches; the sidecar is joined in process
    assert result.accounting.figures["inserted"] == 6
