"""The ``sql`` loader: stream the listed Parquet parts into the day's staging table in bounded batches.

The Broccoli sidecar is read first into an in-process lookup (``BroccoliLookup``: its SHA1s sorted,
about 21 bytes per classified file), the curated tokens too (``merge.TokenLookup``), and each report
batch carries its row's incoming classification and source into the one staging table
(``schema.vt_classified_staging``), so the merge joins neither a sidecar table nor the tokens.

On MySQL-family servers with LOAD DATA, rows of keys the target does not hold yet skip staging
(``SqlStager._split``): the admitted ones are loaded straight into ``ioc_file_hashes``, the others
counted out; a batch whose LOAD DATA the server took short (another load inserted a key since the
check) is rolled back and staged instead, so the guarded merge settles it (``_settle``). The
export is sorted by sha256, so batches arrive in key order and the staging table's only index, its
primary key, grows at its end. A worker thread prepares the next batch (Parquet read, checks, join,
the TSV file) while the server loads the current one (``read_ahead``).

MySQL-family servers get one ``LOAD DATA LOCAL INFILE`` per batch (a tab-separated file written by
polars, binary columns as hex and UNHEXed by the server); a server that refuses local infile gets
batched ``INSERT`` instead, with a warning. SQLite gets batched ``INSERT ... ON CONFLICT DO
NOTHING``. Every batch is its own transaction and is retried on a dropped connection: the staging
table is keyed, so re-sending a batch that did commit changes nothing.

Nothing is cut silently. Before a batch is written, each row is checked against what its columns
hold on every warehouse (``row_problems``: required values, INTEGER and DATETIME ranges, the
target's text limits) and a row that does not fit is quarantined with its reason. ``LOAD DATA
LOCAL`` is implicitly ``IGNORE``: a value the column would clip or truncate only raises a warning.
So any warning but a duplicate key is an error (``StagingWarnings``, naming the table and the first
warnings): the batch is rolled back and staged row by row, each row that the server refuses or
changes quarantined as ``refused_by_warehouse`` with the server's message.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.pool import NullPool

from ti_pipeline.core import schema, values
from ti_pipeline.core.accounting import QuarantineRecord
from ti_pipeline.core.exports import BROCCOLI_CLASSIFICATIONS, DayExport, iter_batches
from ti_pipeline.vt_feed.load.base import StageRequest, StageResult, mysql_family, quote_identifier, retrying
from ti_pipeline.vt_feed.load.merge import TARGET, TokenLookup, incoming, unknown_if_none

# Server or client refusing LOAD DATA LOCAL: not allowed (1148), disabled (3948; MariaDB 4166), rejected (2068).
LOCAL_INFILE_REFUSED = (1148, 2068, 3948, 4166)
# The VT report columns a row cannot be merged without.
REQUIRED = ("sha256", "scan_date", "positives")
# The longest text each report column may hold: what its column in ioc_file_hashes holds.
REPORT_TEXT_LIMITS = schema.TEXT_LIMITS["ioc_file_hashes"]
REFUSED = "refused_by_warehouse"
DUPLICATE_KEY = 1062  # skipped like a duplicate in the export: counted by the stager's shortfall
# MySQL errors about one value (NULL, out of range, truncated, incorrect, too long): that row is refused.
VALUE_ERRORS = frozenset({1048, 1264, 1265, 1292, 1366, 1406, 1411, 1690})
WARNINGS_SHOWN = 3
# The target's columns a new row gets straight from LOAD DATA: what the merge would insert.
DIRECT_COLUMNS = (
    "sha256", "sha1", "md5", "classification", "source", "detection_names", "scan_date", "positives", "total",
    "first_seen", "last_seen",
)
# Keys per existence check (one indexed IN lookup each).
CHECK_KEYS = 5_000
_INTEGER_RANGES = {sa.SmallInteger: (-(2**15), 2**15 - 1), sa.Integer: (values.INT32_MIN, values.INT32_MAX)}


class StagingWarnings(Exception):
    """The server took a batch but changed values (clipped, truncated, zeroed) instead of refusing them."""

    def __init__(self, table: str, warnings: list[tuple]):
        first = "; ".join(f"{level} {code}: {message}" for level, code, message in warnings[:WARNINGS_SHOWN])
        super().__init__(f"{table}: the server changed values instead of refusing them ({first})")


def load_data_statement(table: sa.Table, columns: Iterable[str] | None = None) -> str:
    """``LOAD DATA LOCAL INFILE`` of a file written by ``write_tsv`` (file name bound as %(path)s), of
    ``columns`` of ``table`` in that order (default: all of them)."""
    targets, sets = [], []
    for column in table.columns if columns is None else [table.c[name] for name in columns]:
        if isinstance(column.type, sa.BINARY):
            targets.append(f"@{column.name}")
            sets.append(f"{quote_identifier(column.name)} = UNHEX(@{column.name})")
        else:
            targets.append(quote_identifier(column.name))
    statement = (
        f"LOAD DATA LOCAL INFILE %(path)s INTO TABLE {quote_identifier(table.name)} CHARACTER SET utf8mb4 "
        "FIELDS TERMINATED BY '\\t' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' LINES TERMINATED BY '\\n' "
        f"({', '.join(targets)})"
    )
    return statement + (f" SET {', '.join(sets)}" if sets else "")


def naive_utc(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Timestamps as naive UTC (what DATETIME columns hold)."""
    columns = [
        pc.cast(col, pa.timestamp(col.type.unit)) if pa.types.is_timestamp(col.type) and col.type.tz else col
        for col in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def write_tsv(batch: pa.RecordBatch, path: str) -> None:
    """Tab-separated, strings quoted (quotes doubled), NULL unquoted, binary as hex, DATETIME text."""
    frame = pl.from_arrow(naive_utc(batch))
    frame = frame.with_columns(pl.col(pl.Binary).bin.encode("hex"))
    frame.write_csv(
        path, separator="\t", include_header=False, quote_style="non_numeric",
        null_value="NULL", datetime_format="%Y-%m-%d %H:%M:%S",
    )


# ---- rows that no warehouse stores as they are ---------------------------------------------------


def _timestamp_bound(moment: datetime, arrow_type: pa.DataType) -> pa.Scalar | None:
    try:
        return pa.scalar(moment.replace(tzinfo=UTC) if arrow_type.tz else moment, type=arrow_type)
    except (pa.ArrowInvalid, OverflowError):
        return None  # the unit cannot reach the bound (nanoseconds end in 2262): nothing to check


def _column_problems(name: str, array: pa.Array, column: sa.Column, limits: Mapping[str, schema.TextLimit]):
    """``(reason, mask of the rows it applies to)`` of every check ``column`` makes of ``array``."""
    kind, arrow_type = column.type, array.type
    if isinstance(kind, sa.BINARY):
        if pa.types.is_fixed_size_binary(arrow_type):
            if arrow_type.byte_width != kind.length:
                yield f"invalid_{name}", pc.is_valid(array)
        else:
            yield f"invalid_{name}", pc.not_equal(pc.binary_length(array), kind.length)
    elif type(kind) in _INTEGER_RANGES and pa.types.is_integer(arrow_type):
        low, high = _INTEGER_RANGES[type(kind)]
        info = np.iinfo(arrow_type.to_pandas_dtype())
        if info.min < low or info.max > high:
            yield f"out_of_range:{name}", pc.or_(pc.less(array, low), pc.greater(array, high))
    elif isinstance(kind, sa.DateTime) and pa.types.is_timestamp(arrow_type):
        for bound, outside in ((values.DATETIME_MIN, pc.less), (values.DATETIME_MAX, pc.greater)):
            scalar = _timestamp_bound(bound, arrow_type)
            if scalar is not None:
                yield f"out_of_range:{name}", outside(array, scalar)
    elif name in limits and (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)):
        limit = limits[name]
        too_long = pc.greater(pc.utf8_length(array), limit.chars)
        if limit.utf8_bytes is not None:
            too_long = pc.or_(too_long, pc.greater(pc.binary_length(array), limit.utf8_bytes))
        yield values.too_long_reason(name), too_long


def row_problems(
    batch: pa.RecordBatch, table: sa.Table, required: tuple[str, ...], limits: Mapping[str, schema.TextLimit]
) -> pa.Array | None:
    """Per row, the first reason it cannot be staged as it is (null where it can); None when every row can.

    Reasons: ``missing_<column>`` (a required value), ``out_of_range:<column>`` (outside INTEGER or
    DATETIME), ``value_too_long:<column>`` (longer than ``limits`` allow), ``invalid_<column>`` (a
    digest of the wrong length). Computed on whole columns: a clean batch costs a few vector passes.
    """
    checks = [(f"missing_{name}", pc.is_null(batch.column(name))) for name in required]
    for name in batch.schema.names:
        if name in table.c:
            checks.extend(_column_problems(name, batch.column(name), table.c[name], limits))
    reasons = None
    for reason, mask in checks:
        mask = pc.fill_null(mask, False)
        if not pc.any(mask).as_py():
            continue
        if reasons is None:
            reasons = pa.nulls(batch.num_rows, pa.string())
        reasons = pc.if_else(pc.and_(mask, pc.is_null(reasons)), reason, reasons)
    return reasons


def _excerpt(row: dict) -> str:
    return str({k: (v.hex() if isinstance(v, bytes) else str(v) if v is not None else None) for k, v in row.items()})[:512]


def _readable(batch: pa.RecordBatch) -> list[dict]:
    """Rows as Python values, timestamps as text (a rejected one may lie past what ``datetime`` holds)."""
    columns = [pc.cast(c, pa.string()) if pa.types.is_timestamp(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names).to_pylist()


@dataclass
class _Batch:
    """The stageable rows of a part's batch, each with its row offset in the part."""

    rows: pa.RecordBatch
    offsets: pa.Array
    url: str
    read: int
    tsv: str | None = None
    """The rows written for LOAD DATA (when that is how they go), by ``SqlStager._prepare``."""
    direct: pa.RecordBatch | None = None
    """New keys the policy admits (staging columns), for LOAD DATA straight into the target."""
    direct_offsets: pa.Array | None = None
    direct_tsv: str | None = None
    direct_outcomes: Counter[str] | None = None
    dropped: int = 0
    """New keys the policy leaves out: settled in process, their counts in ``dropped_outcomes``."""
    dropped_outcomes: Counter[str] | None = None


_END = object()


def read_ahead(items: Iterator[_Batch]) -> Iterator[_Batch]:
    """``items``, each made in a worker thread while the caller works on the one before: Parquet
    decoding, Arrow and the TSV writer release the GIL, so they overlap the server's LOAD DATA."""
    with ThreadPoolExecutor(1, thread_name_prefix="ti-stage") as pool:
        pending = pool.submit(next, items, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, items, _END)
            yield item


@lru_cache(maxsize=4)
def _lookup_statement(keys: int, dialect: sa.Dialect) -> str:
    """``SELECT sha256 FROM ioc_file_hashes WHERE sha256 IN (%(k0)s, ...)`` for ``keys`` keys, compiled
    once: the driver binds the values, and SQLAlchemy does not render the list again per call."""
    column = TARGET.c.sha256
    params = [sa.bindparam(f"k{i}", type_=column.type) for i in range(keys)]
    return str(sa.select(column).where(column.in_(params)).compile(dialect=dialect))


# ---- the Broccoli sidecar, joined in process ------------------------------------------------------

CLASSIFICATION_VALUES = pa.array(schema.FILE_CLASSIFICATIONS)
SIDECAR_COLUMNS = ("sha1", "classification")
# What the sidecar's rows are checked against: a SHA1 of 20 bytes (the other columns are not read).
SIDECAR_CHECKS = schema.staging_table("broccoli_sidecar", pa.schema([f for f in BROCCOLI_CLASSIFICATIONS if f.name in SIDECAR_COLUMNS]), "sha1")


def _digest_keys(digest: pa.Array, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A digest column as numpy ``S<width>`` (numpy's string order is byte order for equal lengths) and
    the mask of the rows that hold a ``width``-byte value (a null or another length matches nothing)."""
    usable = pc.fill_null(pc.equal(pc.binary_length(digest), width), False)
    if digest.type != pa.binary(width):
        digest = pc.if_else(usable, digest, pa.scalar(bytes(width), digest.type)).cast(pa.binary(width))
    raw = np.frombuffer(digest.buffers()[1], dtype=f"S{width}")
    return raw[digest.offset : digest.offset + len(digest)], usable.to_numpy(zero_copy_only=False)


def _sha1_keys(sha1: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    return _digest_keys(sha1, 20)


@dataclass(frozen=True)
class BroccoliLookup:
    """The day's Broccoli classification per SHA1: ``sha1s`` ascending (numpy ``S20``) and ``codes``,
    each an index into ``schema.FILE_CLASSIFICATIONS``. Only SHA1s with a classification are held;
    ``distinct`` counts every SHA1 the sidecar answered for."""

    sha1s: np.ndarray
    codes: np.ndarray
    distinct: int

    @classmethod
    def build(cls, batches: Iterable[pa.RecordBatch]) -> BroccoliLookup:
        """From the sidecar's checked rows (non-null 20-byte SHA1s). A repeated SHA1 keeps its first
        row, as the keyed sidecar table did; a value outside the enum counts as no classification."""
        keys, codes = [np.empty(0, dtype="S20")], [np.empty(0, dtype=np.int8)]
        for batch in batches:
            keys.append(_sha1_keys(batch.column("sha1"))[0].copy())
            index = pc.index_in(batch.column("classification"), value_set=CLASSIFICATION_VALUES)
            codes.append(pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int8))
        all_keys, all_codes = np.concatenate(keys), np.concatenate(codes)
        order = np.argsort(all_keys, kind="stable")
        ordered = all_keys[order]
        first = np.ones(len(ordered), dtype=bool)
        first[1:] = ordered[1:] != ordered[:-1]
        kept_codes = all_codes[order[first]]
        classified = kept_codes >= 0
        return cls(ordered[first][classified], kept_codes[classified], int(first.sum()))

    def __len__(self) -> int:
        return len(self.sha1s)

    def classify(self, sha1: pa.Array) -> pa.Array:
        """Per row, its SHA1's classification (null: no SHA1, no sidecar row, or none given)."""
        if not len(self.sha1s) or not len(sha1):
            return pa.nulls(len(sha1), pa.string())
        keys, usable = _sha1_keys(sha1)
        where = np.minimum(np.searchsorted(self.sha1s, keys), len(self.sha1s) - 1)
        found = (self.sha1s[where] == keys) & usable
        indices = pa.array(self.codes[where].astype(np.int32), mask=~found)
        return CLASSIFICATION_VALUES.take(indices)


def classified(rows: pa.RecordBatch, table: sa.Table, lookup: BroccoliLookup, tokens: TokenLookup) -> pa.RecordBatch:
    """The staging table's columns of a report batch with its incoming ``classification`` and ``source``
    (``merge.incoming``: a curated token's, else the sidecar's)."""
    classification, source = incoming(tokens.classify(rows), lookup.classify(rows.column("sha1")))
    made = {"classification": classification, "source": source}
    columns = [made[c.name] if c.name in made else rows.column(c.name) for c in table.columns]
    return pa.RecordBatch.from_arrays(columns, names=[c.name for c in table.columns])


def direct_rows(rows: pa.RecordBatch) -> pa.RecordBatch:
    """``DIRECT_COLUMNS`` of new rows (staging columns): what the merge would insert for them."""
    made = {
        "classification": unknown_if_none(rows.column("classification")),
        "first_seen": rows.column("scan_date"),
        "last_seen": rows.column("scan_date"),
    }
    columns = [made[name] if name in made else rows.column(name) for name in DIRECT_COLUMNS]
    return pa.RecordBatch.from_arrays(columns, names=list(DIRECT_COLUMNS))


def new_row_outcomes(classification: pa.Array, source: pa.Array, admitted: bool) -> Counter[str]:
    """The merge's outcome counts of new rows (their final classification is their own): admitted,
    ``inserted`` and ``classification.<X>``; left out, ``classification_not_imported`` and
    ``not_imported.<X>``; and ``token_rows``, the admitted rows stored under a token."""
    counts: Counter[str] = Counter()
    for value, n in zip(*_value_counts(unknown_if_none(classification)), strict=True):
        counts[f"classification.{value}" if admitted else f"not_imported.{value}"] += n
    total = len(classification)
    if admitted:
        counts["inserted"] += total
        counts["token_rows"] += int(pc.sum(pc.equal(source, "TOKENS")).as_py() or 0)
    else:
        counts[values.FILTER_CLASSIFICATION_NOT_IMPORTED] += total
    return +counts if total else Counter()


def _value_counts(array: pa.Array) -> tuple[list, list[int]]:
    counted = pc.value_counts(array)
    return counted.field("values").to_pylist(), counted.field("counts").to_pylist()


class _Seen:
    """The keys settled outside the staging table so far, as sorted ``S32`` runs with their bounds: a
    later copy of one is a duplicate in the export (the staging table's key drops the others)."""

    def __init__(self) -> None:
        self._runs: list[tuple[bytes, bytes, np.ndarray]] = []

    def __bool__(self) -> bool:
        return bool(self._runs)

    def add(self, keys: np.ndarray) -> None:
        if len(keys):
            ordered = np.sort(keys)
            self._runs.append((ordered[0], ordered[-1], ordered))

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        if not len(keys):
            return found
        ordered = np.sort(keys)
        low, high = ordered[0], ordered[-1]
        for first, last, run in self._runs:
            if last < low or first > high:  # the export is sorted: earlier runs rarely overlap
                continue
            where = np.minimum(np.searchsorted(run, keys), len(run) - 1)
            found |= run[where] == keys
        return found


# ---- the stager ----------------------------------------------------------------------------------


class _Collided(Exception):
    """LOAD DATA into the target skipped rows: another load inserted some of the keys since the check."""


class SqlStager:
    name = "sql"
    shortfall_reason = "duplicate_sha256_in_export"
    classifies = True

    def __init__(self) -> None:
        self._use_load_data = True

    def stage(self, request: StageRequest) -> StageResult:
        """Stage the day's report rows. With LOAD DATA and a policy, a batch's rows whose key the target
        does not hold yet are settled here instead (``_split``): those the policy admits go straight
        into the target, the others are counted out; only rows of stored keys are staged for the merge."""
        result = StageResult()
        wh = request.warehouse
        self._use_load_data = request.settings.load_data and mysql_family(wh)
        direct = self._use_load_data and request.admitted is not None
        engine = self._staging_engine(wh.engine)
        # The worker thread's own connection for the existence checks (pre-pinged: a connection dropped
        # while idle is replaced; one dropped during a check retries it, counted in check_figures).
        checker = sa.create_engine(engine.url, pool_size=1, max_overflow=0, pool_pre_ping=True) if direct else None
        check_figures: Counter[str] = Counter()
        try:
            lookup = self._sidecar(request, result.figures)
            with wh.engine.connect() as conn:
                tokens = TokenLookup.read(conn)
            result.figures["token_keys"] = len(tokens)
            table = request.reports_table
            seen = _Seen()
            with tempfile.TemporaryDirectory(prefix="ti-stage-") as tmp:
                checked = self._batches(request, request.reports, table, result.rejected, REQUIRED, REPORT_TEXT_LIMITS)
                prepared = (
                    self._prepare(batch, table, lookup, tokens, os.path.join(tmp, f"batch-{i}"), seen, checker, request.admitted, check_figures)
                    for i, batch in enumerate(checked)
                )
                # Closed before the folder goes: the worker may be writing the next batch's file into it.
                with closing(read_ahead(prepared)) as batches:
                    for index, batch in enumerate(batches):
                        result.read += batch.read
                        self._settle(engine, request, table, batch, result, index, os.path.join(tmp, f"rerouted-{index}.tsv"))
                        result.figures["staged_batches"] += 1
                        request.log.info(f"staged {result.read:,} report rows of {request.reports.prefix} ({index + 1} batches)")
                        request.event("staged_batch", index)
        finally:
            engine.dispose()
            if checker is not None:
                checker.dispose()
        result.figures.update({f"existence_check_{k}": v for k, v in check_figures.items()})
        return result

    def _prepare(
        self, batch: _Batch, table: sa.Table, lookup: BroccoliLookup, tokens: TokenLookup, stem: str, seen: _Seen,
        checker: sa.Engine | None, admitted: tuple[str, ...] | None, check_figures: Counter[str],
    ) -> _Batch:
        """The staging table's columns of the batch with the incoming classification, in key order (the
        server then appends to the B-tree); split by ``_split`` when new keys go straight to the
        target; and the TSV files for LOAD DATA."""
        if not batch.rows.num_rows:
            return batch
        rows = classified(batch.rows, table, lookup, tokens)
        key = table.primary_key.columns.values()[0].name
        order = pc.sort_indices(rows, sort_keys=[(key, "ascending")])
        batch = replace(batch, rows=rows.take(order), offsets=batch.offsets.take(order))
        if checker is not None and admitted is not None and self._use_load_data:
            batch = self._split(batch, key, seen, checker, admitted, check_figures)
        elif seen:  # LOAD DATA refused after some keys were settled unstaged: their copies are duplicates
            keys, _usable = _digest_keys(batch.rows.column(key), 32)
            fresh = pa.array(~seen.contains(keys))
            batch = replace(batch, rows=batch.rows.filter(fresh), offsets=batch.offsets.filter(fresh))
        if batch.direct is not None and batch.direct.num_rows:
            batch.direct_tsv = f"{stem}-direct.tsv"
            write_tsv(direct_rows(batch.direct), batch.direct_tsv)
        if not self._use_load_data or not batch.rows.num_rows:
            return batch
        write_tsv(batch.rows, f"{stem}.tsv")
        return replace(batch, tsv=f"{stem}.tsv")

    def _split(
        self, batch: _Batch, key: str, seen: _Seen, checker: sa.Engine, admitted: tuple[str, ...], check_figures: Counter[str]
    ) -> _Batch:
        """Keep the first row of each key (the staging table's key would drop the later ones), look up
        which keys the target holds, and split: stored keys stay to be staged and merged; new keys the
        policy admits become ``direct``, the others ``dropped`` (counted as the merge would count them)."""
        rows, offsets = batch.rows, batch.offsets
        keys, _usable = _digest_keys(rows.column(key), 32)
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        first &= ~seen.contains(keys)
        if not first.all():
            mask = pa.array(first)
            rows, offsets, keys = rows.filter(mask), offsets.filter(mask), keys[first]
        stored = self._stored(checker, rows.column(key), check_figures)
        new = ~stored
        final = unknown_if_none(rows.column("classification"))
        admits = pc.is_in(final, value_set=pa.array(admitted, pa.string())).to_numpy(zero_copy_only=False)
        go, out = pa.array(new & admits), pa.array(new & ~admits)
        seen.add(keys[new])
        direct, dropped = rows.filter(go), rows.filter(out)
        keep = pa.array(stored)
        return replace(
            batch, rows=rows.filter(keep), offsets=offsets.filter(keep),
            direct=direct, direct_offsets=offsets.filter(go),
            direct_outcomes=new_row_outcomes(direct.column("classification"), direct.column("source"), admitted=True),
            dropped=dropped.num_rows,
            dropped_outcomes=new_row_outcomes(dropped.column("classification"), dropped.column("source"), admitted=False),
        )

    @staticmethod
    def _stored(checker: sa.Engine, keys: pa.Array, figures: Counter[str]) -> np.ndarray:
        """Per key, whether the target holds it: one indexed ``IN`` lookup per ``CHECK_KEYS`` keys, sent
        as the driver's own parameterised statement: SQLAlchemy compiling an expanding ``IN`` of 5,000
        parameters cost two thirds of a day's client CPU (measured), the driver's escaping a tenth of that."""
        found: list[bytes] = []

        def look() -> None:
            found.clear()
            with checker.connect() as conn:
                for start in range(0, len(keys), CHECK_KEYS):
                    chunk = keys.slice(start, CHECK_KEYS).to_pylist()
                    statement = _lookup_statement(len(chunk), conn.dialect)
                    found.extend(conn.exec_driver_sql(statement, {f"k{i}": k for i, k in enumerate(chunk)}).scalars())

        if len(keys):
            retrying(look, "checking which keys the target holds", figures)
        figures["lookups"] += 1
        if not found:
            return np.zeros(len(keys), dtype=bool)
        return pc.is_in(keys, value_set=pa.array(found, keys.type)).to_numpy(zero_copy_only=False)

    def _settle(
        self, engine: sa.Engine, request: StageRequest, table: sa.Table, batch: _Batch, result: StageResult,
        index: int, rerouted_tsv: str,
    ) -> None:
        """Send one prepared batch: its new admitted rows into the target, the others into staging.

        New rows that cannot go straight in (another load inserted one of their keys since the check,
        the server changed a value, or refuses local infile) are staged with the rest, so the guarded
        merge settles them by the newest scan."""
        figures, what = result.figures, f"staging batch {index}"
        rows, offsets, tsv = batch.rows, batch.offsets, batch.tsv
        direct_sent = False
        if batch.direct is not None and batch.direct.num_rows:
            request.event("checked_batch", index)
            if batch.direct_tsv is not None and self._use_load_data:
                direct_sent = self._send_direct(engine, batch.direct_tsv, batch.direct.num_rows, request.log, figures, what)
            elif batch.direct_tsv is not None:
                os.unlink(batch.direct_tsv)
            if direct_sent:
                result.unstaged += batch.direct.num_rows
                result.outcomes.update(batch.direct_outcomes or {})
                figures["direct_rows"] += batch.direct.num_rows
            else:
                both = pa.Table.from_batches([rows, batch.direct]).combine_chunks()
                order = pc.sort_indices(both, sort_keys=[("sha256", "ascending")])
                rows = both.take(order).to_batches()[0]
                offsets = pa.concat_arrays([offsets, batch.direct_offsets]).take(order)
                if tsv is not None:
                    os.unlink(tsv)
                tsv = None
                if self._use_load_data:
                    write_tsv(rows, rerouted_tsv)
                    tsv = rerouted_tsv
                figures["rerouted_rows"] += batch.direct.num_rows
        result.unstaged += batch.dropped
        result.outcomes.update(batch.dropped_outcomes or {})
        if rows.num_rows:
            self._send(engine, request, table, replace(batch, rows=rows, offsets=offsets, tsv=tsv), result.rejected, figures, what)
        elif direct_sent:
            figures["load_data_batches"] += 1

    def _send_direct(self, engine: sa.Engine, path: str, sent: int, log: logging.Logger, figures: Counter[str], what: str) -> bool:
        """LOAD DATA new rows into the target in one transaction; False (rolled back) when the server
        skipped any (a key inserted since the check), changed a value, or refuses local infile."""
        try:
            retrying(lambda: self._load_direct(engine, path, sent), what, figures)
            return True
        except _Collided as exc:
            figures["direct_collisions"] += 1
            log.info(f"{what}: {exc}; merging its new rows instead")
        except sa.exc.IntegrityError as exc:  # a server whose LOAD DATA LOCAL refuses duplicates instead of skipping them
            if error_code(exc) != DUPLICATE_KEY:
                raise
            figures["direct_collisions"] += 1
            log.info(f"{what}: {exc.orig}; merging its new rows instead")
        except StagingWarnings as exc:
            log.warning(f"{what}: {exc}; staging its new rows instead")
        except sa.exc.OperationalError as exc:
            self._refused_local_infile(exc, log)
        finally:
            os.unlink(path)
        return False

    @staticmethod
    def _load_direct(engine: sa.Engine, path: str, sent: int) -> None:
        with engine.begin() as conn:
            result = conn.exec_driver_sql(load_data_statement(TARGET, DIRECT_COLUMNS), {"path": path})
            if result.rowcount != sent:
                raise _Collided(f"{sent - result.rowcount:,} of {sent:,} new keys were inserted by another load since the check")
            raise_on_warnings(conn, result, TARGET.name)

    def _sidecar(self, request: StageRequest, figures: Counter[str]) -> BroccoliLookup:
        """The day's sidecar as a lookup; its unusable rows quarantined (figure ``sidecar_rejected``)."""
        rejected: Counter[str] = Counter()
        checked = []
        for batch in self._batches(request, request.sidecar, SIDECAR_CHECKS, rejected, ("sha1",), {}, SIDECAR_COLUMNS):
            figures["sidecar_rows_read"] += batch.read
            checked.append(batch.rows)
        lookup = BroccoliLookup.build(checked)
        figures["sidecar_rejected"] += sum(rejected.values())
        figures["sidecar_rows"] = lookup.distinct
        figures["sidecar_classified"] = len(lookup)
        return lookup

    def _staging_engine(self, engine: sa.Engine) -> sa.Engine:
        """One connection of its own, kept across batches (local infile enabled on MySQL).

        No pre-ping: a connection dropped between batches fails the next batch, which is retried.
        """
        url = engine.url
        if self._use_load_data and "local_infile" not in url.query:
            url = url.update_query_dict({"local_infile": "1"})
        if url.get_backend_name() == "sqlite":
            return sa.create_engine(url, poolclass=NullPool, connect_args={"timeout": 60})
        return sa.create_engine(url, pool_size=1, max_overflow=0)

    def _batches(
        self, request: StageRequest, export: DayExport, table: sa.Table, rejected: Counter[str],
        required: tuple[str, ...], limits: Mapping[str, schema.TextLimit], columns: tuple[str, ...] | None = None,
    ) -> Iterator[_Batch]:
        """Stageable rows of every listed part in bounded batches; the others quarantined and counted."""
        for part in export.parts:
            url = request.store.url_of(part.name)
            for offset, batch in iter_batches(request.store, part, request.settings.batch_rows, columns):
                read = batch.num_rows
                offsets = pa.array(np.arange(offset, offset + read, dtype=np.int64))
                reasons = row_problems(batch, table, required, limits)
                if reasons is not None:
                    bad = pc.is_valid(reasons)
                    self._reject(request, batch.filter(bad), reasons.filter(bad), offsets.filter(bad), url, rejected)
                    good = pc.invert(bad)
                    batch, offsets = batch.filter(good), offsets.filter(good)
                yield _Batch(batch, offsets, url, read)

    @staticmethod
    def _reject(request: StageRequest, rows: pa.RecordBatch, reasons: pa.Array, offsets: pa.Array, url: str, rejected: Counter[str]) -> None:
        records = []
        for row, reason, offset in zip(_readable(rows), reasons.to_pylist(), offsets.to_pylist(), strict=True):
            rejected[reason] += 1
            records.append(QuarantineRecord(source=url, reason=reason, offset=offset, excerpt=_excerpt(row)))
        request.quarantine(records)

    def _send(
        self, engine: sa.Engine, request: StageRequest, table: sa.Table, batch: _Batch,
        rejected: Counter[str], figures: Counter[str], what: str,
    ) -> None:
        rows, offsets = batch.rows, batch.offsets
        log = request.log
        try:
            if self._use_load_data and batch.tsv is not None and self._send_load_data(engine, table, batch.tsv, log, figures, what):
                figures["load_data_batches"] += 1
                return
            plain = naive_utc(rows).to_pylist()
            retrying(lambda: self._insert(engine, table, plain), what, figures)
            figures["insert_batches"] += 1
            return
        except StagingWarnings as exc:
            log.warning(f"{what}: {exc}; staging its {rows.num_rows:,} rows one by one to quarantine those")
        except sa.exc.DBAPIError as exc:
            if error_code(exc) not in VALUE_ERRORS | {DUPLICATE_KEY}:
                raise
            log.warning(f"{what}: {exc.orig}; staging its {rows.num_rows:,} rows one by one to quarantine those refused")
        refused: list[QuarantineRecord] = []

        def one_by_one() -> None:
            refused[:] = self._one_by_one(engine, table, rows, offsets, batch.url)

        retrying(one_by_one, what, figures)
        figures["row_by_row_batches"] += 1
        rejected[REFUSED] += len(refused)
        request.quarantine(refused)

    def _send_load_data(
        self, engine: sa.Engine, table: sa.Table, path: str, log: logging.Logger, figures: Counter[str], what: str
    ) -> bool:
        """LOAD DATA one batch's file; False when the server refuses local infile (then batched INSERTs from now on)."""
        try:
            retrying(lambda: self._load_data(engine, table, path), what, figures)
            return True
        except sa.exc.OperationalError as exc:
            self._refused_local_infile(exc, log)
            return False
        finally:
            os.unlink(path)

    def _refused_local_infile(self, exc: sa.exc.OperationalError, log: logging.Logger) -> None:
        """Batched INSERTs from now on when ``exc`` is the server or client refusing LOAD DATA LOCAL;
        re-raises anything else."""
        code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
        if code not in LOCAL_INFILE_REFUSED:
            raise exc
        log.warning(
            f"the server refused LOAD DATA LOCAL INFILE ({exc.orig}); staging with batched INSERTs "
            "instead (enable it with SET GLOBAL local_infile=1)"
        )
        self._use_load_data = False

    @staticmethod
    def _load_data(engine: sa.Engine, table: sa.Table, path: str) -> None:
        with engine.begin() as conn:
            result = conn.exec_driver_sql(load_data_statement(table), {"path": path})
            raise_on_warnings(conn, result, table.name)

    @staticmethod
    def _insert(engine: sa.Engine, table: sa.Table, rows: list[dict]) -> None:
        """Batched INSERTs, not IGNORE: a value the server would change fails the batch (or warns, checked)."""
        sqlite_engine = engine.dialect.name == "sqlite"
        stmt = sqlite.insert(table).on_conflict_do_nothing() if sqlite_engine else table.insert()
        with engine.begin() as conn:
            for start in range(0, len(rows), 1000):
                result = conn.execute(stmt, rows[start : start + 1000])
                if not sqlite_engine:
                    raise_on_warnings(conn, result, table.name)

    @staticmethod
    def _one_by_one(engine: sa.Engine, table: sa.Table, rows: pa.RecordBatch, offsets: pa.Array, url: str) -> list[QuarantineRecord]:
        """MySQL family: each row in a savepoint of one transaction; a row the server refuses or changes
        is rolled back and returned as a quarantine record with the server's message."""
        refused = []
        insert = table.insert()
        with engine.begin() as conn:
            for row, offset in zip(naive_utc(rows).to_pylist(), offsets.to_pylist(), strict=True):
                savepoint = conn.begin_nested()
                try:
                    problems = server_warnings(conn, conn.execute(insert, row))
                except sa.exc.DBAPIError as exc:
                    code = error_code(exc)
                    if code not in VALUE_ERRORS | {DUPLICATE_KEY}:
                        raise
                    problems = [] if code == DUPLICATE_KEY else [("Error", code, exc.orig.args[1])]
                    if not problems:
                        savepoint.rollback()  # a duplicate key: the stager's shortfall counts it
                        continue
                if problems:
                    savepoint.rollback()
                    level, code, message = problems[0]
                    refused.append(QuarantineRecord(url, f"{REFUSED}: {level} {code}: {message}"[:255], offset, _excerpt(row)))
                else:
                    savepoint.commit()
        return refused


def error_code(exc: sa.exc.DBAPIError) -> int | None:
    """The MySQL error number of a driver error (None for other drivers' errors)."""
    args = exc.orig.args if exc.orig is not None else ()
    return args[0] if args and isinstance(args[0], int) else None


def server_warnings(conn: sa.Connection, result: sa.CursorResult) -> list[tuple]:
    """The warnings of the statement that gave ``result``, except duplicate keys, as ``(level, code, message)``;
    all of them when the server holds more than it shows.

    The count comes with the statement's reply (the driver's ``warning_count``), so a clean batch costs
    no extra round trip; ``SHOW WARNINGS`` (which TiDB also speaks) only runs when there are some.
    """
    count = getattr(result.context.cursor, "warning_count", None)
    if count == 0:
        return []
    shown = [tuple(w) for w in conn.exec_driver_sql("SHOW WARNINGS").all()]
    changed = [w for w in shown if w[1] != DUPLICATE_KEY]
    return changed if changed or (count or 0) <= len(shown) else shown


def raise_on_warnings(conn: sa.Connection, result: sa.CursorResult, table: str) -> None:
    """A warning is a value the server changed: an error here, never a row stored cut."""
    changed = server_warnings(conn, result)
    if changed:
        raise StagingWarnings(table, changed)
