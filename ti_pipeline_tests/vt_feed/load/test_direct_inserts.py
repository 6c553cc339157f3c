"""The ``sql`` loader on MariaDB writes new keys straight into ``ioc_file_hashes`` (LOAD DATA) and stages
only the keys the table holds: same rows and outcome counts as staging every row, and a key another
load inserts between the existence check and the LOAD DATA still ends merged by the newest scan."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pytest
import sqlalchemy as sa

from ti_pipeline.core import schema
from ti_pipeline.vt_feed.load.merge import TokenLookup
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
)

DAY_A, DAY_B = "2024-01-01", "2024-01-02"
VERDICTS = ["MALWARE", None, "WHITELIST", "HACKTOOL", "UNKNOWN", "RANSOMWARE"]
OUTCOME_FIGURES = ("inserted", "updated", "reapplied", "kept_older", "token_rows")


def dt(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def write_days(store) -> None:
    """A: files 0-11. B: files 6-17, 6-8 rescanned later, 9 with an older copy; tokens on some of both.
    Each day repeats keys in a later batch: a new admitted one (A: 3), a stored one (B: 7) and a new
    one the default policy leaves out (B: 16); the first copy counts, the others are duplicates."""
    write_day(
        store, DAY_A,
        [report(n, "2024-01-01 10:00:00", positives=n + 1) for n in range(12)] + [report(3, "2024-01-01 11:00:00", positives=99)],
        [classification(n, VERDICTS[n % len(VERDICTS)]) for n in range(12) if n % 5],
        parts=2,
    )
    write_day(
        store, DAY_B,
        [report(n, "2023-12-30 10:00:00" if n == 9 else "2024-01-02 10:00:00", positives=40 + n) for n in range(6, 18)]
        + [report(n, "2024-01-02 11:00:00", positives=99) for n in (7, 16)],
        [classification(n, VERDICTS[(n + 1) % len(VERDICTS)]) for n in range(6, 18) if n % 4],
    )


def add_tokens(warehouse) -> None:
    with warehouse.engine.begin() as conn:
        conn.execute(
            schema.ioc_tokens.insert(),
            [
                {"token": sha256_of(2).hex(), "token_type": "SHA256", "response": "malware"},
                {"token": sha1_of(3).hex(), "token_type": "SHA1", "response": "whitelist"},
                {"token": md5_of(13).hex(), "token_type": "MD5", "response": "Hack-Tool"},  # no such word: no token class
                {"token": md5_of(14).hex(), "token_type": "MD5", "response": "pua"},
                {"token": sha256_of(15).hex(), "token_type": "SHA256", "response": "ransomware"},
                {"token": sha1_of(15).hex(), "token_type": "SHA1", "response": "whitelist"},
            ],
        )


def outcome(result) -> tuple:
    acc = result.accounting
    f = acc.figures
    picked = {k: v for k, v in f.items() if k.startswith(("classification.", "not_imported."))}
    # (+: the batched-INSERT path leaves a zero refused_by_warehouse after a duplicate sent it row by row)
    return (acc.read, acc.written, dict(acc.filtered), dict(+acc.rejected), acc.unaccounted, *(f[k] for k in OUTCOME_FIGURES), picked)


def test_tokens_are_read_as_the_sql_join_reads_them():
    tokens = TokenLookup.build(
        [
            (sha256_of(1).hex(), "hacktool"),
            (sha1_of(1).hex(), "whitelist"),  # the SHA256 token decides
            (sha1_of(2).hex().upper(), "Malware"),  # hex read case-insensitively, as MariaDB's collation compares
            (md5_of(3).hex(), "pua"),
            (sha1_of(4).hex(), "no such word"),  # decides, and classifies nothing
            (md5_of(4).hex(), "malware"),
            (md5_of(5).hex(), "trojan"),
            ("example.org", "malware"),
        ]
    )
    rows = pa.RecordBatch.from_pydict(
        {
            "sha256": pa.array([sha256_of(n) for n in range(6)], pa.binary(32)),
            "sha1": pa.array([sha1_of(n) for n in range(5)] + [None], pa.binary(20)),
            "md5": pa.array([md5_of(n) for n in range(6)], pa.binary(16)),
        }
    )
    assert tokens.classify(rows).to_pylist() == [None, "HACKTOOL", "MALWARE", "UNWANTED", None, "MALWARE"]
    assert len(tokens) == 7


@pytest.mark.parametrize("warehouse_url", ["mysql"], indirect=True)
@pytest.mark.parametrize("policy", ["default", "ALL"])
def test_new_keys_go_straight_in_with_the_rows_and_counts_of_the_merge(store, load, warehouse, policy):
    write_days(store)
    add_tokens(warehouse)
    chosen = {"policy": EVERYTHING} if policy == "ALL" else {}
    results, tables = {}, {}
    for load_data in (False, True):  # False: every row staged and merged, as before
        with warehouse.engine.begin() as conn:
            conn.execute(schema.ioc_file_hashes.delete())
        results[load_data] = [outcome(load(day, load_data=load_data, **chosen)) for day in (DAY_A, DAY_B, DAY_A)]
        tables[load_data] = snapshot(warehouse)
    assert tables[True] == tables[False]
    assert results[True] == results[False]
    assert len(tables[True]) >= 8
    assert all(r[3] == {"duplicate_sha256_in_export": 1 if day == DAY_A else 2} for r, day in zip(results[True], (DAY_A, DAY_B, DAY_A), strict=True))

    # Day A again into an empty table: every admitted row goes straight in, nothing is staged.
    with warehouse.engine.begin() as conn:
        conn.execute(schema.ioc_file_hashes.delete())
    first = load(DAY_A, **chosen).accounting
    assert (first.figures["staged_rows"], first.figures["direct_rows"]) == (0, first.written)
    row = rows_by_sha256(warehouse)[sha256_of(2)]
    assert (row["classification"], row["source"], row["positives"]) == ("MALWARE", "TOKENS", 3)
    assert row["first_seen"] == row["last_seen"] == row["scan_date"] == dt("2024-01-01 10:00:00")
    # Day B: its keys the table holds (of files 6-11) are staged and merged, new admitted ones go straight in.
    held = len(set(rows_by_sha256(warehouse)) & {sha256_of(n) for n in range(6, 18)})
    second = load(DAY_B, **chosen).accounting
    assert second.figures["staged_rows"] == held > 0
    assert second.figures["direct_rows"] == second.figures["inserted"]


@pytest.mark.parametrize("warehouse_url", ["mysql"], indirect=True)
def test_a_key_inserted_after_the_check_is_merged_by_the_newest_scan(store, load, warehouse, warehouse_url):
    write_day(
        store, DAY_A,
        [report(n, "2024-01-01 10:00:00", positives=7) for n in range(6)],
        [classification(n, "MALWARE") for n in range(6)],
    )
    other = sa.create_engine(warehouse_url)

    def stored(n: int, scan: str, positives: int) -> dict:
        return {
            "sha256": sha256_of(n), "sha1": sha1_of(n), "md5": md5_of(n), "classification": "HACKTOOL", "source": "SAGE_DUMP",
            "detection_names": None, "scan_date": dt(scan), "positives": positives, "total": 50,
            "first_seen": dt(scan), "last_seen": dt(scan),
        }

    def race(event: str, index: int) -> None:
        # Between the existence check and the LOAD DATA into the target: another load commits two of
        # the batch's keys, one with an older scan and one with a newer one.
        if (event, index) == ("checked_batch", 0):
            with other.begin() as conn:
                conn.execute(schema.ioc_file_hashes.insert(), [stored(1, "2023-06-01 00:00:00", 1), stored(4, "2025-06-01 00:00:00", 99)])

    acc = load(DAY_A, on_event=race, batch_rows=10).accounting
    other.dispose()
    rows = rows_by_sha256(warehouse)
    assert sorted(rows) == sorted(sha256_of(n) for n in range(6))
    older, newer = rows[sha256_of(1)], rows[sha256_of(4)]
    # The day's scan is newer than file 1's stored one: it wins, and first_seen stays the earliest.
    assert (older["positives"], older["scan_date"], older["classification"], older["source"]) == (
        7, dt("2024-01-01 10:00:00"), "MALWARE", "VIRUS_TOTAL",
    )
    assert older["first_seen"] == dt("2023-06-01 00:00:00")
    # File 4's stored scan is newer: its values stay, and first_seen takes the day's earlier scan.
    assert (newer["positives"], newer["scan_date"], newer["classification"]) == (99, dt("2025-06-01 00:00:00"), "HACKTOOL")
    assert newer["first_seen"] == dt("2024-01-01 10:00:00")
    assert (acc.figures["inserted"], acc.figures["updated"], acc.figures["kept_older"], acc.figures["reapplied"]) == (4, 1, 1, 0)
    assert (acc.read, acc.written, acc.filtered["newer_scan_already_stored"], acc.unaccounted) == (6, 5, 1, 0)
    assert (acc.figures["direct_collisions"], acc.figures["rerouted_rows"], acc.figures["direct_rows"]) == (1, 6, 0)
    assert rows[sha256_of(0)]["positives"] == 7
