"""The ``sql`` loader: stream the listed Parquet parts into the day's staging table in bounded batches.

The Broccoli sidecar is read first into an in-process lookup (``BroccoliLookup``: its SHA1s sorted,
about 21 bytes per classified file), and each report batch carries its row's classification into
the one staging table (``schema.vt_classified_staging``), so the merge joins no sidecar table. The
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
_INTEGER_RANGES = {sa.SmallInteger: (-(2**15), 2**15 - 1), sa.Integer: (values.INT32_MIN, values.INT32_MAX)}


class StagingWarnings(Exception):
    """The server took a batch but changed values (clipped, truncated, zeroed) instead of refusing them."""

    def __init__(self, table: str, warnings: list[tuple]):
        first = "; ".join(f"{level} {code}: {message}" for level, code, message in warnings[:WARNINGS_SHOWN])
        super().__init__(f"{table}: the server changed values instead of refusing them ({first})")


def load_data_statement(table: sa.Table) -> str:
    """``LOAD DATA LOCAL INFILE`` of a file written by ``write_tsv`` (file name bound as %(path)s)."""
    targets, sets = [], []
    for column in table.columns:
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


_END = object()


def read_ahead(items: Iterator[_Batch]) -> Iterator[_Batch]:
    """``items``, each made in a worker thread while the caller works on the one before: Parquet
    decoding, Arrow and the TSV writer release the GIL, so they overlap the server's LOAD DATA."""
    with ThreadPoolExecutor(1, thread_name_prefix="ti-stage") as pool:
        pending = pool.submit(next, items, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, items, _END)
            yield item


# ---- the Broccoli sidecar, joined in process ------------------------------------------------------

CLASSIFICATION_VALUES = pa.array(schema.FILE_CLASSIFICATIONS)
SIDECAR_COLUMNS = ("sha1", "classification")
# What the sidecar's rows are checked against: a SHA1 of 20 bytes (the other columns are not read).
SIDECAR_CHECKS = schema.staging_table("broccoli_sidecar", pa.schema([f for f in BROCCOLI_CLASSIFICATIONS if f.name in SIDECAR_COLUMNS]), "sha1")


def _sha1_keys(sha1: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A SHA1 column as numpy ``S20`` (numpy's string order is byte order for equal lengths) and the
    mask of the rows that hold a 20-byte value (a null or another length can match nothing)."""
    usable = pc.fill_null(pc.equal(pc.binary_length(sha1), 20), False)
    if sha1.type != pa.binary(20):
        sha1 = pc.if_else(usable, sha1, pa.scalar(bytes(20), sha1.type)).cast(pa.binary(20))
    raw = np.frombuffer(sha1.buffers()[1], dtype="S20")
    return raw[sha1.offset : sha1.offset + len(sha1)], usable.to_numpy(zero_copy_only=False)


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


def classified(rows: pa.RecordBatch, table: sa.Table, lookup: BroccoliLookup) -> pa.RecordBatch:
    """The staging table's columns of a report batch, its ``classification`` from the sidecar."""
    columns = [lookup.classify(rows.column("sha1")) if c.name == "classification" else rows.column(c.name) for c in table.columns]
    return pa.RecordBatch.from_arrays(columns, names=[c.name for c in table.columns])


# ---- the stager ----------------------------------------------------------------------------------


class SqlStager:
    name = "sql"
    shortfall_reason = "duplicate_sha256_in_export"
    classifies = True

    def __init__(self) -> None:
        self._use_load_data = True

    def stage(self, request: StageRequest) -> StageResult:
        result = StageResult()
        wh = request.warehouse
        self._use_load_data = request.settings.load_data and mysql_family(wh)
        engine = self._staging_engine(wh.engine)
        try:
            lookup = self._sidecar(request, result.figures)
            table = request.reports_table
            with tempfile.TemporaryDirectory(prefix="ti-stage-") as tmp:
                checked = self._batches(request, request.reports, table, result.rejected, REQUIRED, REPORT_TEXT_LIMITS)
                prepared = (self._prepare(batch, table, lookup, os.path.join(tmp, f"batch-{i}.tsv")) for i, batch in enumerate(checked))
                # Closed before the folder goes: the worker may be writing the next batch's file into it.
                with closing(read_ahead(prepared)) as batches:
                    for index, batch in enumerate(batches):
                        result.read += batch.read
                        if batch.rows.num_rows:
                            self._send(engine, request, table, batch, result.rejected, result.figures, f"staging batch {index}")
                        result.figures["staged_batches"] += 1
                        request.log.info(f"staged {result.read:,} report rows of {request.reports.prefix} ({index + 1} batches)")
                        request.event("staged_batch", index)
        finally:
            engine.dispose()
        return result

    def _prepare(self, batch: _Batch, table: sa.Table, lookup: BroccoliLookup, tsv: str) -> _Batch:
        """The staging table's columns of the batch with the Broccoli classification joined, in key
        order (the server then appends to the staging B-tree), and its TSV file for LOAD DATA."""
        if not batch.rows.num_rows:
            return batch
        rows = classified(batch.rows, table, lookup)
        key = table.primary_key.columns.values()[0].name
        order = pc.sort_indices(rows, sort_keys=[(key, "ascending")])
        rows, offsets = rows.take(order), batch.offsets.take(order)
        if not self._use_load_data:
            return replace(batch, rows=rows, offsets=offsets)
        write_tsv(rows, tsv)
        return replace(batch, rows=rows, offsets=offsets, tsv=tsv)

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
            code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
            if code not in LOCAL_INFILE_REFUSED:
                raise
            log.warning(
                f"the server refused LOAD DATA LOCAL INFILE ({exc.orig}); staging with batched INSERTs "
                "instead (enable it with SET GLOBAL local_infile=1)"
            )
            self._use_load_data = False
            return False
        finally:
            os.unlink(path)

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
