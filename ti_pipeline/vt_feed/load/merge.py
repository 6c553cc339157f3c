"""The one merge of a staged export day into ``ioc_file_hashes``, for MySQL/TiDB and SQLite alike.

Rules (docs/architecture.md, "VT load"):
- scan columns (hashes, detections, positives, total, scan_date) follow the newest ``scan_date``
  (the table's ``schema.MERGE_RULES`` guard, as on the dump load; an equal date re-applies the same
  values), so days loaded in any order or twice end in the same table;
- ``first_seen``/``last_seen`` are the earliest/latest scan ever loaded;
- the incoming classification: a curated SHA256/SHA1/MD5 token (``ioc_tokens``, its word read as
  ``values.classification_of`` reads it: malware -> MALWARE, whitelist -> WHITELIST, hacktool ->
  HACKTOOL, ...) outranks Broccoli's and makes the row's source ``TOKENS``. The ``sql`` loader
  computes it in process (``TokenLookup``, ``incoming``) and stages it with the source; for the
  TiDB tools' staging the merge joins the sidecar table and ``ioc_tokens`` (``_classified``);
- a row stored from a token keeps its classification. Otherwise Broccoli's classification of the
  SHA1 wins when the incoming scan does, or fills a stored ``UNKNOWN``; Broccoli without one (404,
  NULL, no sidecar row, a value outside the enum) keeps the stored classification, and a new row
  gets ``UNKNOWN``;
- import policy (``TI_IMPORT_CLASSIFICATIONS``): a staged row whose classification after these rules
  is not admitted is not merged at all; it is counted as filtered ``classification_not_imported``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite

from ti_pipeline.core import schema, values
from ti_pipeline.core.warehouse import merge_guard

TARGET = schema.ioc_file_hashes
RULE = schema.MERGE_RULES[TARGET.name]
OUTCOMES = ("inserted", "updated", "reapplied", "kept_older")
# Token hash columns, the most specific first: when tokens disagree, the SHA256 token decides.
TOKEN_DIGESTS = ("sha256", "sha1", "md5")
DIGEST_BYTES = {"sha256": 32, "sha1": 20, "md5": 16}
_HEX = re.compile(r"[0-9a-fA-F]+")
# What ``values.classification_of`` ignores in a word besides case, removed the same way in SQL.
_WORD_SEPARATORS = (" ", "\t", "-", "_")


def _lit(value: str) -> sa.ColumnElement:
    """An enum value of our own as an inline literal (pymysql cannot bind inside ON DUPLICATE KEY)."""
    if value not in schema.FILE_CLASSIFICATIONS + schema.SOURCES:
        raise ValueError(value)
    return sa.literal_column(f"'{value}'")


def _word_key(word: str) -> str:
    for separator in _WORD_SEPARATORS:
        word = word.replace(separator, "")
    return word.lower()


def token_classification(response: sa.ColumnElement) -> sa.ColumnElement:
    """``values.classification_of(response)`` in SQL, from its one table of words (NULL for an unknown word)."""
    key = sa.func.lower(response)
    for separator in _WORD_SEPARATORS:
        key = sa.func.replace(key, sa.literal_column(f"'{separator}'"), sa.literal_column("''"))
    whens = {}
    for word in values.CLASSIFICATION_WORDS:
        word_key = _word_key(word)
        if not word_key.isalnum():
            raise ValueError(f"not a plain classification word: {word!r}")
        whens[word_key] = values.classification_of(word)
    return sa.case(*((sa.literal_column(f"'{k}'"), _lit(c)) for k, c in whens.items()), value=key, else_=None)


@dataclass(frozen=True)
class TokenLookup:
    """The curated digest tokens in process (``ioc_tokens`` is small: about 2,500 rows), matched as the
    SQL join matches them (``token = LOWER(HEX(digest))``, the first of ``TOKEN_DIGESTS`` that has a
    token decides) and read through ``values.classification_of``, the one table of words. Hex digits
    match in either case, as MariaDB's collation compares them (the dump's rules store tokens in lower
    case, so SQLite's exact comparison never differs in practice).

    ``digests``: per digest column, its token keys (raw bytes) and each token's classification (None
    for a word no source uses: that token still decides, and classifies nothing, as in SQL)."""

    digests: tuple[tuple[str, pa.Array, pa.Array], ...]

    @classmethod
    def build(cls, tokens: Iterable[tuple[str, str]]) -> TokenLookup:
        tokens = list(tokens)
        digests = []
        for name in TOKEN_DIGESTS:
            width = DIGEST_BYTES[name]
            found: dict[bytes, str | None] = {}
            for token, response in tokens:
                if isinstance(token, str) and len(token) == 2 * width and _HEX.fullmatch(token):
                    found.setdefault(bytes.fromhex(token), values.classification_of(response))
            if found:
                digests.append((name, pa.array(list(found), pa.binary(width)), pa.array(list(found.values()), pa.string())))
        return cls(tuple(digests))

    @classmethod
    def read(cls, conn: sa.Connection) -> TokenLookup:
        return cls.build(conn.execute(sa.select(schema.ioc_tokens.c.token, schema.ioc_tokens.c.response)).all())

    def __len__(self) -> int:
        return sum(len(keys) for _name, keys, _classes in self.digests)

    def classify(self, rows: pa.RecordBatch) -> pa.Array:
        """Per row, the classification its token gives (null: no token, or a token of an unknown word)."""
        result = pa.nulls(rows.num_rows, pa.string())
        decided = np.zeros(rows.num_rows, dtype=bool)
        for name, keys, classes in self.digests:
            column = rows.column(name)
            index = pc.index_in(column, value_set=keys if column.type == keys.type else keys.cast(column.type))
            hit = pc.is_valid(index).to_numpy(zero_copy_only=False)
            result = pc.if_else(pa.array(hit & ~decided), pc.take(classes, index), result)
            decided |= hit
        return result


def incoming(token_class: pa.Array, broccoli_class: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The incoming row's ``(classification, source)`` in Arrow, as ``_classified`` states it in SQL
    for the TiDB tools' staging: a token outranks Broccoli and makes the source TOKENS. The
    classification is null when neither gives one (``UNKNOWN`` once merged: ``unknown_if_none``)."""
    tokens = pc.is_valid(token_class)
    return pc.coalesce(token_class, broccoli_class), pc.if_else(tokens, "TOKENS", "VIRUS_TOTAL")


def unknown_if_none(classification):
    """What an incoming row without a classification holds: ``UNKNOWN`` (Arrow or SQL)."""
    if isinstance(classification, pa.Array | pa.ChunkedArray):
        return pc.fill_null(classification, "UNKNOWN")
    return sa.func.coalesce(classification, _lit("UNKNOWN"))


def count(condition: sa.ColumnElement) -> sa.ColumnElement:
    """The number of rows where ``condition`` holds (0, not NULL, over no rows)."""
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


def classification_rule(new_class, new_source, old_class, old_source, guard) -> sa.ColumnElement:
    """The stored row's classification after a merge (module doc): one rule for the merge's SET and its filter."""
    tokens = _lit("TOKENS")
    return sa.case(
        (new_source == tokens, new_class),
        (old_source == tokens, old_class),
        (new_class == _lit("UNKNOWN"), old_class),
        (sa.or_(guard, old_class == _lit("UNKNOWN")), new_class),
        else_=old_class,
    )


@dataclass(frozen=True)
class MergePlan:
    """The statements that merge one day's staging tables (built once, run per chunk of keys).

    ``sidecar``: the staged Broccoli sidecar, joined by SHA1; None when ``reports`` carries each row's
    ``classification``. ``admitted``: the classifications the import policy lets into the table
    (``ImportPolicy.classifications``).
    """

    reports: sa.Table
    sidecar: sa.Table | None
    dialect: str
    admitted: tuple[str, ...]

    def __post_init__(self) -> None:
        ordered = tuple(c for c in schema.FILE_CLASSIFICATIONS if c in self.admitted)
        if len(ordered) != len(set(self.admitted)):
            raise ValueError(f"not classification values: {sorted(set(self.admitted) - set(ordered))}")
        object.__setattr__(self, "admitted", ordered)  # schema order: the same SQL for the same policy

    def _classified(self, lo, hi):
        """The range's staged rows with their incoming classification and source (a derived table that
        reads no target rows), joined to their stored row; and the final classification of each.

        Returns ``(from clause, incoming row columns, stored row alias, final classification)``.
        """
        s = self.reports.c
        if self.sidecar is None:  # the sql loader staged each row's incoming classification and source
            joined, classification, source = self.reports, unknown_if_none(s.classification), s.source
        else:
            b = self.sidecar.c
            joined = self.reports.outerjoin(self.sidecar, b.sha1 == s.sha1)
            valid = b.classification.in_([_lit(c) for c in schema.FILE_CLASSIFICATIONS])
            broccoli_class = sa.case((valid, b.classification), else_=None)
            responses = []
            for digest in TOKEN_DIGESTS:
                token = schema.ioc_tokens.alias(f"tok_{digest}")
                joined = joined.outerjoin(token, token.c.token == sa.func.lower(sa.func.hex(s[digest])))
                responses.append(token.c.response)
            token_class = token_classification(sa.func.coalesce(*responses))
            classification = unknown_if_none(sa.func.coalesce(token_class, broccoli_class))
            source = sa.case((token_class.is_not(None), _lit("TOKENS")), else_=_lit("VIRUS_TOTAL"))
        incoming_rows = (
            sa.select(
                s.sha256, s.sha1, s.md5, s.detection_names, s.scan_date, s.positives, s.total,
                classification.label("classification"), source.label("source"),
            )
            .select_from(joined)
            .where(*self._key_range(lo, hi))
            .subquery("incoming")
        )
        new = incoming_rows.c
        stored = TARGET.alias("stored_row")
        guard = merge_guard(stored, new, RULE)
        final = sa.case(
            (stored.c.sha256.is_(None), new.classification),
            else_=classification_rule(new.classification, new.source, stored.c.classification, stored.c.source, guard),
        )
        return incoming_rows.outerjoin(stored, stored.c.sha256 == new.sha256), new, stored, final

    def _admitted(self, final: sa.ColumnElement) -> sa.ColumnElement:
        return final.in_([_lit(c) for c in self.admitted])

    def _source_select(self, lo, hi) -> sa.Select:
        joined, new, _stored, final = self._classified(lo, hi)
        return (
            sa.select(
                new.sha256, new.sha1, new.md5, new.classification, new.source,
                new.detection_names, new.scan_date, new.positives, new.total,
                new.scan_date.label("first_seen"), new.scan_date.label("last_seen"),
            )
            .select_from(joined)
            .where(self._admitted(final))
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
        classification = classification_rule(new["classification"], new["source"], t.classification, t.source, guard)
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
        """``INSERT ... SELECT ... ON DUPLICATE KEY UPDATE`` / ``ON CONFLICT DO UPDATE`` of the range's admitted rows."""
        select = self._source_select(lo, hi)
        columns = [c.name for c in select.selected_columns]
        if self.dialect == "sqlite":
            stmt = sqlite.insert(TARGET).from_select(columns, select)
            return stmt.on_conflict_do_update(index_elements=["sha256"], set_=dict(self._assignments(stmt.excluded)))
        stmt = mysql.insert(TARGET).from_select(columns, select)
        return stmt.on_duplicate_key_update(self._assignments(stmt.inserted))

    def outcome_statement(self, lo: bytes | None, hi: bytes | None) -> sa.Select:
        """Per final classification, how the range's staged rows will fare against what is stored:
        inserted, updated, reapplied, kept_older (``count_outcomes`` applies the policy to it)."""
        joined, new, stored, final = self._classified(lo, hi)
        old = stored.c
        final = final.label("final_classification")  # grouped by this name: the joined tables have a "classification"
        return (
            sa.select(
                final,
                count(old.sha256.is_(None)).label("inserted"),
                count(sa.and_(old.sha256.is_not(None), sa.or_(old.scan_date.is_(None), new.scan_date > old.scan_date))).label("updated"),
                count(new.scan_date == old.scan_date).label("reapplied"),
                count(new.scan_date < old.scan_date).label("kept_older"),
            )
            .select_from(joined)
            .group_by(final)
        )

    def next_bound(self, lo: bytes | None, chunk_rows: int) -> sa.Select:
        key = self.reports.c.sha256
        query = sa.select(key).order_by(key).offset(chunk_rows - 1).limit(1)
        return query.where(key > sa.bindparam("lo", lo, type_=sa.BINARY(32))) if lo is not None else query

    def verify_statement(self) -> sa.Select:
        """After the merge, in one pass: ``(missing, token_rows)``, the staged rows the policy admits
        that the target does not hold (must be none) and the day's rows a curated token classifies."""
        joined, _new, stored, final = self._classified(None, None)
        return sa.select(
            count(sa.and_(stored.c.sha256.is_(None), self._admitted(final))).label("missing"),
            count(stored.c.source == _lit("TOKENS")).label("token_rows"),
        ).select_from(joined)


def key_ranges(conn: sa.Connection, plan: MergePlan, chunk_rows: int):
    """``(lo, hi]`` ranges of staged keys with at most ``chunk_rows`` rows each (hi None = to the end)."""
    lo = None
    while True:
        hi = conn.execute(plan.next_bound(lo, chunk_rows)).scalar()
        yield lo, hi
        if hi is None:
            return
        lo = hi


def count_outcomes(rows: Iterable, admitted: tuple[str, ...]) -> Counter[str]:
    """Outcome counts of an ``outcome_statement``: admitted rows by outcome and final classification
    (``classification.<X>``), the others as ``classification_not_imported`` and ``not_imported.<X>``."""
    counts: Counter[str] = Counter()
    for row in rows:
        staged = sum(int(getattr(row, name)) for name in OUTCOMES)
        classification = row.final_classification
        if classification in admitted:
            counts.update({name: int(getattr(row, name)) for name in OUTCOMES})
            counts[f"classification.{classification}"] += staged
        else:
            counts[values.FILTER_CLASSIFICATION_NOT_IMPORTED] += staged
            counts[f"not_imported.{classification}"] += staged
    return counts


def merge_range(conn: sa.Connection, plan: MergePlan, lo: bytes | None, hi: bytes | None) -> Counter[str]:
    """Count the outcomes, then merge, in the caller's transaction."""
    counts = count_outcomes(conn.execute(plan.outcome_statement(lo, hi)), plan.admitted)
    conn.execute(plan.merge_statement(lo, hi))
    return counts
