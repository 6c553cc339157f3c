"""The one merge of a staged export day into ``ioc_file_hashes``, for MySQL/TiDB and SQLite alike.

Rules (docs/architecture.md, "VT load"):
- scan columns (hashes, detections, positives, total, scan_date) follow the newest ``scan_date``
  (the ``Warehouse`` guard ``MergeRule(newer_column="scan_date")``; an equal date re-applies the same
  values), so days loaded in any order or twice end in the same table;
- ``first_seen``/``last_seen`` are the earliest/latest scan ever loaded;
- classification: a curated SHA1/MD5 token (``ioc_tokens``: malware -> MALWARE, ransomware ->
  RANSOMWARE, whitelist -> INDIFFERENT) outranks everything and makes the row's source ``TOKENS``;
  a row stored from a token keeps its classification. Otherwise Broccoli's classification of the
  SHA1 wins when the incoming scan does, or fills a stored ``UNKNOWN``; Broccoli without one (404,
  NULL, no sidecar row, a value outside the enum) keeps the stored classification, and a new row
  gets ``UNKNOWN``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite

from ti_pipeline import schema
from ti_pipeline.warehouse import MergeRule, merge_guard

RULE = MergeRule(newer_column="scan_date")
TOKEN_CLASSIFICATION = {"malware": "MALWARE", "ransomware": "RANSOMWARE", "whitelist": "INDIFFERENT"}
TARGET = schema.ioc_file_hashes
OUTCOMES = ("inserted", "updated", "reapplied", "kept_older")


def _lit(value: str) -> sa.ColumnElement:
    """An enum value of our own as an inline literal (pymysql cannot bind inside ON DUPLICATE KEY)."""
    if value not in schema.FILE_CLASSIFICATIONS + schema.SOURCES:
        raise ValueError(value)
    return sa.literal_column(f"'{value}'")


@dataclass(frozen=True)
class MergePlan:
    """The statements that merge one day's staging tables (built once, run per chunk of keys)."""

    reports: sa.Table
    sidecar: sa.Table
    dialect: str

    def _source_select(self, lo, hi) -> sa.Select:
        s, b = self.reports.c, self.sidecar.c
        tok_sha1 = schema.ioc_tokens.alias("tok_sha1")
        tok_md5 = schema.ioc_tokens.alias("tok_md5")
        response = sa.func.coalesce(tok_sha1.c.response, tok_md5.c.response)
        token_class = sa.case(*((response == r, _lit(c)) for r, c in TOKEN_CLASSIFICATION.items()), else_=None)
        broccoli_class = sa.case((b.classification.in_([_lit(c) for c in schema.FILE_CLASSIFICATIONS]), b.classification), else_=None)
        classification = sa.func.coalesce(token_class, broccoli_class, _lit("UNKNOWN"))
        source = sa.case((token_class.is_not(None), _lit("TOKENS")), else_=_lit("VIRUS_TOTAL"))
        joined = (
            self.reports.outerjoin(self.sidecar, b.sha1 == s.sha1)
            .outerjoin(tok_sha1, tok_sha1.c.token == sa.func.lower(sa.func.hex(s.sha1)))
            .outerjoin(tok_md5, tok_md5.c.token == sa.func.lower(sa.func.hex(s.md5)))
        )
        return (
            sa.select(
                s.sha256, s.sha1, s.md5, classification.label("classification"), source.label("source"),
                s.detection_names, s.scan_date, s.positives, s.total,
                s.scan_date.label("first_seen"), s.scan_date.label("last_seen"),
            )
            .select_from(joined)
            .where(*self._key_range(lo, hi))
        )

    def _key_range(self, lo, hi) -> list[sa.ColumnElement]:
        key = self.reports.c.sha256
        where: list[sa.ColumnElement] = [sa.true()]  # SQLite's upsert needs a WHERE after a join
        if lo is not None:
            where.append(key > sa.bindparam("lo", lo, type_=sa.BINARY(32)))
        if hi is not None:
            where.append(key <= sa.bindparam("hi", hi, type_=sa.BINARY(32)))
        return where

    @staticmethod
    def _assignments(new) -> list[tuple[str, sa.ColumnElement]]:
        """SET list in MySQL's left-to-right order: every guard reads scan_date, so it comes last."""
        t = TARGET.c
        guard = merge_guard(TARGET, new, RULE)
        tokens = _lit("TOKENS")
        classification = sa.case(
            (new["source"] == tokens, new["classification"]),
            (t.source == tokens, t.classification),
            (new["classification"] == _lit("UNKNOWN"), t.classification),
            (sa.or_(guard, t.classification == _lit("UNKNOWN")), new["classification"]),
            else_=t.classification,
        )
        source = sa.case(
            (sa.or_(new["source"] == tokens, t.source == tokens), tokens),
            (guard, new["source"]),
            else_=t.source,
        )

        def newest(column: str, keep_stored_when_null: bool = False) -> sa.ColumnElement:
            value = sa.func.coalesce(new[column], t[column]) if keep_stored_when_null else new[column]
            return sa.case((guard, value), else_=t[column])

        return [
            ("updated_at", sa.case((guard, sa.func.current_timestamp()), else_=t.updated_at)),
            ("classification", classification),
            ("source", source),
            ("sha1", newest("sha1", keep_stored_when_null=True)),
            ("md5", newest("md5", keep_stored_when_null=True)),
            ("detection_names", newest("detection_names")),
            ("positives", newest("positives")),
            ("total", newest("total")),
            ("first_seen", sa.case((sa.or_(t.first_seen.is_(None), new["first_seen"] < t.first_seen), new["first_seen"]), else_=t.first_seen)),
            ("last_seen", sa.case((sa.or_(t.last_seen.is_(None), new["last_seen"] > t.last_seen), new["last_seen"]), else_=t.last_seen)),
            ("scan_date", newest("scan_date")),
        ]

    def merge_statement(self, lo: bytes | None, hi: bytes | None) -> sa.Executable:
        """``INSERT ... SELECT ... ON DUPLICATE KEY UPDATE`` / ``ON CONFLICT DO UPDATE`` for one key range."""
        select = self._source_select(lo, hi)
        columns = [c.name for c in select.selected_columns]
        if self.dialect == "sqlite":
            stmt = sqlite.insert(TARGET).from_select(columns, select)
            return stmt.on_conflict_do_update(index_elements=["sha256"], set_=dict(self._assignments(stmt.excluded)))
        stmt = mysql.insert(TARGET).from_select(columns, select)
        return stmt.on_duplicate_key_update(self._assignments(stmt.inserted))

    def outcome_statement(self, lo: bytes | None, hi: bytes | None) -> sa.Select:
        """How the range's staged rows will fare against what is stored: inserted, updated, reapplied, kept_older."""
        new = self.reports.c
        stored = TARGET.alias("stored")
        old = stored.c

        def count(condition) -> sa.ColumnElement:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        return (
            sa.select(
                count(old.sha256.is_(None)).label("inserted"),
                count(sa.and_(old.sha256.is_not(None), sa.or_(old.scan_date.is_(None), new.scan_date > old.scan_date))).label("updated"),
                count(new.scan_date == old.scan_date).label("reapplied"),
                count(new.scan_date < old.scan_date).label("kept_older"),
            )
            .select_from(self.reports.outerjoin(stored, old.sha256 == new.sha256))
            .where(*self._key_range(lo, hi))
        )

    def token_rows_statement(self) -> sa.Select:
        """The day's rows that a curated token classifies (after the merge)."""
        s = self.reports.c
        return (
            sa.select(sa.func.count())
            .select_from(self.reports.join(TARGET, TARGET.c.sha256 == s.sha256))
            .where(TARGET.c.source == _lit("TOKENS"))
        )

    def next_bound(self, lo: bytes | None, chunk_rows: int) -> sa.Select:
        key = self.reports.c.sha256
        query = sa.select(key).order_by(key).offset(chunk_rows - 1).limit(1)
        return query.where(key > sa.bindparam("lo", lo, type_=sa.BINARY(32))) if lo is not None else query

    def missing_statement(self) -> sa.Select:
        """Staged sha256s that the target does not hold (must be none after the merge)."""
        s = self.reports.c
        return sa.select(sa.func.count()).select_from(self.reports.outerjoin(TARGET, TARGET.c.sha256 == s.sha256)).where(TARGET.c.sha256.is_(None))


def key_ranges(conn: sa.Connection, plan: MergePlan, chunk_rows: int):
    """``(lo, hi]`` ranges of staged keys with at most ``chunk_rows`` rows each (hi None = to the end)."""
    lo = None
    while True:
        hi = conn.execute(plan.next_bound(lo, chunk_rows)).scalar()
        yield lo, hi
        if hi is None:
            return
        lo = hi


def merge_range(conn: sa.Connection, plan: MergePlan, lo: bytes | None, hi: bytes | None) -> Counter[str]:
    """Count the outcomes, then merge, in the caller's transaction."""
    row = conn.execute(plan.outcome_statement(lo, hi)).one()
    conn.execute(plan.merge_statement(lo, hi))
    return Counter({name: int(getattr(row, name)) for name in OUTCOMES})
