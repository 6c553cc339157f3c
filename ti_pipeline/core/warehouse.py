"""Writes to the warehouse: idempotent, batched native upserts in bounded transactions.

The same calls run on TiDB/MySQL (``INSERT ... ON DUPLICATE KEY UPDATE``) and on the embedded SQLite
(``INSERT ... ON CONFLICT DO UPDATE``). Every batch is its own short transaction (TiDB wants a few
hundred rows per statement and transactions far below 100 MB) and is retried on a dropped connection:
re-applying an upsert batch is harmless, so a retry can never double a row.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite

from ti_pipeline.core import schema
from ti_pipeline.core.accounting import QuarantineRecord
from ti_pipeline.core.retry import Backoff, retry_call
from ti_pipeline.core.schema import MergeRule

log = logging.getLogger(__name__)
T = TypeVar("T")

BATCH_ROWS = 500
WRITE_RETRIES = Backoff(attempts=6, base=0.5, cap=30.0)
ALWAYS_REPLACE = MergeRule()
"""The rule of a plain upsert: an incoming row replaces the stored one."""
# MySQL and TiDB refuse a longer named-lock name.
LOCK_NAME_CHARS = 64


class PartitionBusy(RuntimeError):
    """Another run holds the lock of the asset partition this run was about to materialize."""


def batched(rows: Iterable[dict], size: int = BATCH_ROWS) -> Iterator[list[dict]]:
    it = iter(rows)
    while batch := list(islice(it, size)):
        yield batch


def merge_guard(table: sa.Table, new, rule: MergeRule):
    """The condition under which ``new`` (the incoming row) may replace the stored row, or None."""
    guard = None
    if rule.newer_column:
        stored = table.c[rule.newer_column]
        guard = sa.or_(stored.is_(None), new[rule.newer_column] >= stored)
    if rule.protected_source:
        # Inlined, as pymysql's multi-row executemany cannot bind parameters after VALUES; the
        # value is one of the schema's own source names, never input.
        if rule.protected_source not in schema.SOURCES:
            raise ValueError(f"not a source: {rule.protected_source!r}")
        protected = sa.literal_column(f"'{rule.protected_source}'")
        unprotected = table.c.source != protected if guard is None else sa.and_(table.c.source != protected, guard)
        guard = sa.or_(new["source"] == protected, unprotected)
    return guard


def create_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL lets readers (the UI, checks) run beside a load.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_recycle=3600)


class Warehouse:
    def __init__(self, url: str, *, batch_rows: int = BATCH_ROWS):
        self.url = url
        self.engine = create_engine(url)
        self.batch_rows = batch_rows
        self._statements: dict[tuple[str, MergeRule, tuple[str, ...]], sa.Executable] = {}

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def ensure_schema(self) -> None:
        """Make sure the tables are at the code's migration head.

        The embedded SQLite upgrades itself, so the demo and a laptop need no setup step. A server is
        migrated only by ``ti-pipeline migrate`` (a reviewed step, under a lock): here it is checked,
        and a run fails with ``SchemaOutOfDate`` rather than create or alter a table.
        """
        from ti_pipeline.core import migrations  # Alembic, imported only by a process that opens a warehouse

        if self.dialect == "sqlite":
            migrations.upgrade(self.url)
        else:
            migrations.check(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def partition_lock(self, asset: str, partition: str, *, holder: str, wait_seconds: float = 0.0) -> Iterator[None]:
        """Hold the lock of one asset partition (``sage_dump/ioc_file_hashes`` ``r01``) while it is
        materialized: one run at a time writes a partition's rows, quarantine and files.

        TiDB/MySQL/MariaDB: a named lock (``GET_LOCK``) held by a connection of its own; SQLite: an
        ``flock`` on a file beside the database. Both die with the process, so a killed run never
        leaves its partition locked. ``holder`` (a run id) is recorded in ``partition_locks`` so a
        refused run can name it. Raises ``PartitionBusy`` when another holder keeps the lock for
        ``wait_seconds`` (0: refuse at once; TiDB waits at least a second).
        """
        lock = self._flock if self.dialect == "sqlite" else self._named_lock
        with lock(asset, partition, wait_seconds) as got:
            if not got:
                raise PartitionBusy(
                    f"{asset} {partition} is being materialized by another run ({self._holder_of(asset, partition)}); "
                    "this run stops without changes"
                )
            self._record_holder(asset, partition, holder)
            try:
                yield
            finally:
                try:
                    self._record_holder(asset, partition, None)
                except sa.exc.SQLAlchemyError as exc:  # the lock goes anyway; the next holder replaces the row
                    log.warning(f"could not clear the holder of {asset} {partition}: {driver_error(exc)}")

    @contextmanager
    def _named_lock(self, asset: str, partition: str, wait_seconds: float) -> Iterator[bool]:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # Named locks are server-wide: the database's name keeps two warehouses on one server apart.
            database = conn.execute(sa.text("SELECT DATABASE()")).scalar()
            name = lock_name(f"{database}:{asset}:{partition}")
            timeout = max(0, round(wait_seconds))
            if conn.execute(sa.select(sa.func.get_lock(name, timeout))).scalar() != 1:
                yield False
                return
            try:
                yield True
            finally:
                try:
                    conn.execute(sa.select(sa.func.release_lock(name)))
                except sa.exc.DBAPIError:
                    pass  # the session is gone, and its lock with it

    @contextmanager
    def _flock(self, asset: str, partition: str, wait_seconds: float) -> Iterator[bool]:
        database = self.engine.url.database
        if not database or database == ":memory:":
            raise ValueError(f"the embedded warehouse needs a file, not {self.url!r}")
        folder = Path(f"{database}-locks")
        folder.mkdir(exist_ok=True)
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', f'{asset}.{partition}')}.lock"
        deadline = time.monotonic() + wait_seconds
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            try:  # the file may have been removed by its last holder between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)  # before the unlock: a waiter that locks the old file retries
            os.close(fd)

    def _record_holder(self, asset: str, partition: str, holder: str | None) -> None:
        t = schema.partition_locks
        where = (t.c.asset == asset, t.c.partition_key == partition)

        def record(conn: sa.Connection) -> None:
            conn.execute(t.delete().where(*where))
            if holder is not None:
                conn.execute(t.insert().values(asset=asset, partition_key=partition, holder=holder[:255],
                                               acquired_at=datetime.now(UTC).replace(tzinfo=None, microsecond=0)))

        self._with_retry(record)

    def _holder_of(self, asset: str, partition: str) -> str:
        t = schema.partition_locks
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.c.holder, t.c.acquired_at).where(
                t.c.asset == asset, t.c.partition_key == partition)).first()
        return f"{row.holder}, since {row.acquired_at:%Y-%m-%d %H:%M:%S} UTC" if row else "holder not recorded yet"

    def _upsert_statement(self, table: sa.Table, columns: tuple[str, ...], rule: MergeRule) -> sa.Executable:
        key = (table.name, rule, columns)
        if key in self._statements:
            return self._statements[key]
        pk = [c.name for c in table.primary_key.columns]
        updatable = [c for c in columns if c not in pk and c != "created_at"]
        has_updated_at = "updated_at" in table.c and "updated_at" not in columns
        if self.dialect == "sqlite":
            stmt = sqlite.insert(table)
            new = stmt.excluded
            sets = {c: new[c] for c in updatable}
            if has_updated_at:
                sets["updated_at"] = sa.func.current_timestamp()
            stmt = stmt.on_conflict_do_update(index_elements=pk, set_=sets, where=merge_guard(table, new, rule))
        elif self.dialect in ("mysql", "mariadb"):
            stmt = mysql.insert(table)
            new = stmt.inserted
            guard = merge_guard(table, new, rule)
            # MySQL applies assignments left to right and later ones see earlier results, so the
            # guard's own column is assigned last.
            ordered = sorted(updatable, key=lambda c: c == rule.newer_column)
            sets = [(c, new[c] if guard is None else sa.func.IF(guard, new[c], table.c[c])) for c in ordered]
            if has_updated_at:
                stamp = sa.func.current_timestamp()
                sets.insert(0, ("updated_at", stamp if guard is None else sa.func.IF(guard, stamp, table.c.updated_at)))
            stmt = stmt.on_duplicate_key_update(sets)
        else:
            raise ValueError(f"unsupported warehouse dialect: {self.dialect}")
        self._statements[key] = stmt
        return stmt

    def upsert(self, table: sa.Table, rows: Iterable[dict], rule: MergeRule = ALWAYS_REPLACE) -> int:
        """Upsert rows in batches; returns how many rows were sent."""
        sent = 0
        for batch in batched(rows, self.batch_rows):
            columns = tuple(batch[0])
            self._with_retry(lambda conn, b=batch, c=columns: conn.execute(self._upsert_statement(table, c, rule), b))
            sent += len(batch)
        return sent

    def clear_quarantine(self, asset: str, partition_key: str) -> None:
        """Forget an asset partition's quarantine before it is rebuilt (re-runs stay idempotent)."""
        q = schema.quarantine
        self._with_retry(lambda conn: conn.execute(q.delete().where(q.c.asset == asset, q.c.partition_key == partition_key)))

    def add_quarantine(self, asset: str, partition_key: str, records: Sequence[QuarantineRecord]) -> None:
        if not records:
            return
        rows = [
            {
                "asset": asset,
                "partition_key": partition_key,
                "source": r.source[:512],
                "byte_offset": r.offset,
                "reason": r.reason[:255],
                "excerpt": r.excerpt,
            }
            for r in records
        ]
        for batch in batched(rows, self.batch_rows):
            self._with_retry(lambda conn, b=batch: conn.execute(schema.quarantine.insert(), b))

    def count(self, table: sa.Table, *where) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()

    def transaction(self, work: Callable[[sa.Connection], T]) -> T:
        """``work`` in one transaction, retried whole on a dropped connection or a deadlock."""
        def transaction() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        return retry_call(transaction, WRITE_RETRIES, what="warehouse write", retry_on=is_transient, describe=driver_error,
                          logger=log)

    def _with_retry(self, work: Callable[[sa.Connection], object]) -> None:
        self.transaction(work)


def lock_name(key: str) -> str:
    """A named-lock name for ``key``: ``ti:`` and the key, or, when longer than MySQL's 64
    characters, its start and a digest of the whole."""
    name = f"ti:{key}"
    if len(name) <= LOCK_NAME_CHARS:
        return name
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return f"{name[:LOCK_NAME_CHARS - len(digest) - 1]}~{digest}"


def is_transient(exc: Exception) -> bool:
    """Dropped or refused connections, deadlocks and lock waits: worth another try."""
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
    if isinstance(code, int):
        return code in (1205, 1213, 2003, 2006, 2013, 2055, 8022, 8028, 9007)
    return "locked" in str(exc).lower() or exc.connection_invalidated


def driver_error(exc: Exception) -> str:
    """The driver's own message, for a log line: SQLAlchemy's text would add the statement and every row."""
    return str(getattr(exc, "orig", None) or exc)
