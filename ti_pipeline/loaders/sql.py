"""The ``sql`` loader: stream the listed Parquet parts into the staging tables in bounded batches.

MySQL-family servers get one ``LOAD DATA LOCAL INFILE`` per batch (a tab-separated file written by
polars, binary columns as hex and UNHEXed by the server); a server that refuses local infile gets
batched ``INSERT IGNORE`` instead, with a warning. SQLite gets batched ``INSERT ... ON CONFLICT DO
NOTHING``. Every batch is its own transaction and is retried on a dropped connection: the staging
table is keyed, so re-sending a batch that did commit changes nothing.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.pool import NullPool

from ti_pipeline.accounting import QuarantineRecord
from ti_pipeline.loaders.base import StageRequest, StageResult, mysql_family, quote_identifier, retrying
from ti_pipeline.loaders.exports_reader import DayExport, iter_batches

# Server or client refusing LOAD DATA LOCAL: not allowed (1148), disabled (3948; MariaDB 4166), rejected (2068).
LOCAL_INFILE_REFUSED = (1148, 2068, 3948, 4166)
# The VT report columns a row cannot be merged without.
REQUIRED = ("sha256", "scan_date", "positives")


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


def split_valid(batch: pa.RecordBatch, required: tuple[str, ...]) -> tuple[pa.RecordBatch, pa.Array | None]:
    """The rows with every required column present, and the indices of the others (None when none)."""
    mask = None
    for name in required:
        valid = pc.is_valid(batch.column(name))
        mask = valid if mask is None else pc.and_(mask, valid)
    if mask is None or pc.all(mask).as_py():
        return batch, None
    return batch.filter(mask), pc.indices_nonzero(pc.invert(mask))


def quarantine_records(
    batch: pa.RecordBatch, indices: pa.Array, required: tuple[str, ...], url: str, offset: int, rejected: Counter[str]
) -> list[QuarantineRecord]:
    """One record per unusable row (reason: the first required column it lacks), counted in ``rejected``."""
    records = []
    for index, row in zip(indices.to_pylist(), batch.take(indices).to_pylist(), strict=True):
        reason = "missing_" + next(name for name in required if row.get(name) is None)
        rejected[reason] += 1
        excerpt = {k: (v.hex() if isinstance(v, bytes) else str(v) if v is not None else None) for k, v in row.items()}
        records.append(QuarantineRecord(source=url, reason=reason, offset=offset + index, excerpt=str(excerpt)[:512]))
    return records


class SqlStager:
    name = "sql"
    shortfall_reason = "duplicate_sha256_in_export"

    def __init__(self) -> None:
        self._use_load_data = True

    def stage(self, request: StageRequest) -> StageResult:
        result = StageResult()
        wh = request.warehouse
        self._use_load_data = request.settings.load_data and mysql_family(wh)
        engine = self._staging_engine(wh.engine)
        try:
            index = 0
            for batch, read in self._batches(request, request.reports, result.rejected, REQUIRED):
                result.read += read
                if batch.num_rows:
                    self._send(engine, request, request.reports_table, batch, result, f"staging batch {index}")
                result.figures["staged_batches"] += 1
                request.log.info(f"staged {result.read:,} report rows of {request.reports.prefix} ({index + 1} batches)")
                request.event("staged_batch", index)
                index += 1
            sidecar_rejected: Counter[str] = Counter()
            for batch, read in self._batches(request, request.sidecar, sidecar_rejected, ("sha1",)):
                result.figures["sidecar_rows_read"] += read
                if batch.num_rows:
                    self._send(engine, request, request.sidecar_table, batch, result, "staging sidecar batch")
            result.figures["sidecar_rejected"] += sum(sidecar_rejected.values())
        finally:
            engine.dispose()
        return result

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
        self, request: StageRequest, export: DayExport, rejected: Counter[str], required: tuple[str, ...]
    ) -> Iterator[tuple[pa.RecordBatch, int]]:
        """Valid rows of every listed part in bounded batches; the others quarantined and counted."""
        for part in export.parts:
            url = request.store.url_of(part.name)
            for offset, batch in iter_batches(request.store, part, request.settings.batch_rows):
                valid, invalid = split_valid(batch, required)
                if invalid is not None:
                    request.quarantine(quarantine_records(batch, invalid, required, url, offset, rejected))
                yield valid, batch.num_rows

    def _send(self, engine, request: StageRequest, table: sa.Table, batch: pa.RecordBatch, result: StageResult, what: str) -> None:
        # In key order the server appends to the staging B-tree instead of splitting pages all over it.
        key = table.primary_key.columns.values()[0].name
        batch = batch.take(pc.sort_indices(batch, sort_keys=[(key, "ascending")]))
        if self._use_load_data:
            with tempfile.TemporaryDirectory(prefix="ti-stage-") as tmp:
                path = os.path.join(tmp, "batch.tsv")
                write_tsv(batch, path)
                try:
                    retrying(lambda: self._load_data(engine, table, path), what, request.log, result.figures)
                    result.figures["load_data_batches"] += 1
                    return
                except sa.exc.OperationalError as exc:
                    code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
                    if code not in LOCAL_INFILE_REFUSED:
                        raise
                    request.log.warning(
                        f"the server refused LOAD DATA LOCAL INFILE ({exc.orig}); staging with batched INSERTs "
                        "instead (enable it with SET GLOBAL local_infile=1)"
                    )
                    self._use_load_data = False
        rows = naive_utc(batch).to_pylist()
        retrying(lambda: self._insert(engine, table, rows), what, request.log, result.figures)
        result.figures["insert_batches"] += 1

    @staticmethod
    def _load_data(engine: sa.Engine, table: sa.Table, path: str) -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(load_data_statement(table), {"path": path})

    @staticmethod
    def _insert(engine: sa.Engine, table: sa.Table, rows: list[dict]) -> None:
        if engine.dialect.name == "sqlite":
            stmt = sqlite.insert(table).on_conflict_do_nothing()
        else:
            stmt = mysql.insert(table).prefix_with("IGNORE")
        with engine.begin() as conn:
            for start in range(0, len(rows), 1000):
                conn.execute(stmt, rows[start : start + 1000])
