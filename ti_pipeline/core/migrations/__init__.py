"""Alembic migrations of the warehouse.

``schema.metadata`` is the one definition of the tables; the revisions in ``versions/`` are the steps
that bring an existing warehouse to it. Alembic is configured here in code (no alembic.ini): the
package folder is the script location and the caller hands ``env.py`` its connection or, for the SQL
a DBA reviews, a dialect name.
"""
# ruff: noqa: E402 (Alembic is imported after its logger is quietened)

from __future__ import annotations

import io
import logging
import shutil
import sqlite3
import tempfile
from argparse import Namespace
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

SCRIPT_LOCATION = Path(__file__).parent
VERSION_TABLE = "alembic_version"
# How long a migrator waits for another one (the MySQL named lock, the SQLite lock file).
LOCK_TIMEOUT_SECONDS = 600

# Set before Alembic is imported, which logs each plugin it sets up at INFO (as each migration step
# later): a run or the CLI reports the revisions itself.
logging.getLogger("alembic").setLevel(logging.WARNING)

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from ti_pipeline.core import schema
from ti_pipeline.core.warehouse import create_engine


class SchemaOutOfDate(RuntimeError):
    """The warehouse is not at the revision this code expects."""


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Server defaults as generic SQL (``CURRENT_TIMESTAMP``), not SQLite's parenthesised form:
    revisions are generated against a scratch SQLite but run on TiDB/MySQL too."""
    if type_ == "server_default" and isinstance(obj, sa.DefaultClause) and isinstance(obj.arg, sa.ClauseElement):
        return f"sa.text({str(obj.arg.compile(dialect=sa.engine.default.DefaultDialect()))!r})"
    return False


def _compare_type(context: MigrationContext, _inspected: Any, column: sa.Column, _inspected_type: Any,
                  metadata_type: sa.types.TypeEngine) -> bool | None:
    """On SQLite, the declared type against the schema's (SQLite reflects a type it does not know,
    such as BINARY(32), as NUMERIC); elsewhere Alembic's own comparison."""
    if context.dialect.name != "sqlite":
        return None
    declared = context.connection.execute(
        sa.text("SELECT type FROM pragma_table_info(:t) WHERE name = :c"), {"t": column.table.name, "c": column.name}
    ).scalar_one()
    return declared != metadata_type.compile(dialect=context.dialect)


def context_options() -> dict[str, Any]:
    """Options of every migration context: env.py's and the drift test's comparison.

    Batch rendering is on for every dialect, so a generated revision also runs on the embedded SQLite
    (which can only ALTER by copying the table).
    """
    return {
        "target_metadata": schema.metadata,
        "version_table": VERSION_TABLE,
        "render_as_batch": True,
        "compare_type": _compare_type,
        "compare_server_default": True,
        "render_item": _render_item,
    }


def config(connection: sa.Connection | None = None, *, dialect_name: str | None = None,
           output_buffer: io.StringIO | None = None) -> Config:
    """An Alembic configuration for one command on ``connection`` (or offline for ``dialect_name``)."""
    cfg = Config(output_buffer=output_buffer, cmd_opts=Namespace(quiet=True),
                 attributes={"connection": connection, "dialect_name": dialect_name})
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("path_separator", "os")
    return cfg


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    """The revision this code expects."""
    revision = scripts().get_current_head()
    if revision is None:
        raise RuntimeError(f"no revisions under {SCRIPT_LOCATION / 'versions'}")
    return revision


def current(connection: sa.Connection) -> str | None:
    """The database's revision; None before its first migration."""
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def check(engine: sa.Engine) -> None:
    """Raise ``SchemaOutOfDate`` unless the database is at head; never changes it."""
    with engine.connect() as conn:
        at = current(conn)
    expected = head()
    if at == expected:
        return
    if at is not None and at not in {script.revision for script in scripts().walk_revisions()}:
        raise SchemaOutOfDate(f"warehouse at revision {at}, which this code does not know (a newer release "
                              f"migrated it?); code expects {expected}")
    raise SchemaOutOfDate(f"warehouse at revision {at or 'none'}, code expects {expected}: run `ti-pipeline migrate`")


def _migration_engine(url: str) -> sa.Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        # pysqlite would run DDL outside any transaction: one BEGIN IMMEDIATE transaction makes the
        # upgrade all or nothing, its write lock taken up front (no deadlock with a concurrent writer).
        @sa.event.listens_for(engine, "connect")
        def _manual_transactions(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin_immediate(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def _migration_lock(conn: sa.Connection) -> Iterator[None]:
    """A server-wide named lock per database on MySQL/MariaDB/TiDB (their DDL is not transactional)."""
    if conn.dialect.name != "mysql":
        yield
        return
    name = sa.func.left(sa.func.concat("ti_pipeline migrate ", sa.func.database()), 64)
    got = conn.execute(sa.select(sa.func.get_lock(name, LOCK_TIMEOUT_SECONDS))).scalar()
    conn.commit()
    if got != 1:
        raise TimeoutError(f"another `ti-pipeline migrate` held the migration lock for {LOCK_TIMEOUT_SECONDS}s")
    try:
        yield
    finally:
        conn.execute(sa.select(sa.func.release_lock(name)))
        conn.commit()


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    """An exclusive lock on a file beside an SQLite warehouse, taken before connecting: the first
    connection to a new file switches it to WAL, which two connections at once cannot both do."""
    database = sa.make_url(url).database
    if not database or database == ":memory:":
        raise ValueError(f"the embedded warehouse needs a file, not {url!r}")
    lock = sqlite3.connect(f"{database}-migrate.lock", timeout=LOCK_TIMEOUT_SECONDS, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        lock.close()


def _adopt(conn: sa.Connection, stamp: bool) -> None:
    """A warehouse whose tables were created before migrations existed (no revision recorded): with
    ``stamp``, record head once its tables are found equal to the schema; otherwise refuse, rather
    than fail half-way on CREATE TABLE."""
    present = sorted(set(sa.inspect(conn).get_table_names()) & set(schema.metadata.tables))
    if not present:
        return
    if not stamp:
        raise SchemaOutOfDate(
            f"warehouse has tables ({', '.join(present)}) but no schema revision: it was set up before "
            f"migrations. Run `ti-pipeline migrate --stamp` to compare it with the schema and record revision "
            f"{head()}"
        )
    found = compare_metadata(MigrationContext.configure(conn, opts=context_options()), schema.metadata)
    if found:
        listed = "\n".join(f"  {difference}" for difference in found)
        raise SchemaOutOfDate(f"warehouse tables differ from revision {head()}, not stamped:\n{listed}")
    command.stamp(config(conn), "head")


def upgrade(url: str, *, stamp: bool = False) -> tuple[str | None, str | None]:
    """Upgrade the database at ``url`` to head, one migrator at a time; returns (from, to) revisions.

    ``stamp`` adopts a warehouse created before migrations (see ``_adopt``)."""
    with _sqlite_file_lock(url) if url.startswith("sqlite") else nullcontext():
        engine = _migration_engine(url)
        try:
            with engine.connect() as conn, _migration_lock(conn), conn.begin():
                before = current(conn)
                if before is None:
                    _adopt(conn, stamp)
                command.upgrade(config(conn), "head")
                after = current(conn)
        finally:
            engine.dispose()
    return before, after


def offline_sql(dialect_name: str) -> str:
    """The SQL of ``upgrade head`` on an empty database, as Alembic would run it, for a DBA."""
    out = io.StringIO()
    command.upgrade(config(dialect_name=dialect_name, output_buffer=out), "head", sql=True)
    return out.getvalue()


def _keep_nonempty(_context: MigrationContext, _revision: Any, directives: list[ops.MigrationScript]) -> None:
    if directives[0].upgrade_ops.is_empty():
        directives.clear()


def new_revision(message: str | None, *, replace: bool = False, scratch_url: str | None = None) -> Path | None:
    """Write a revision from the difference between ``schema.metadata`` and a scratch database at head.

    The scratch database (default: a temporary SQLite; pass an empty MySQL one for a changed ENUM,
    whose values SQLite does not keep) is upgraded first. ``replace`` regenerates the newest revision
    in place (same id, against its parent): for one no warehouse has applied yet, such as the first
    while the tables still change. Returns the file written, or None when nothing changed (a
    replaced revision is then kept).
    """
    directory = scripts()
    replaced = directory.get_revision("head") if replace else None
    if replaced is not None:
        rev_id, message = replaced.revision, message or replaced.doc
    else:
        latest = directory.get_current_head()
        rev_id = f"{int(latest) + 1 if latest else 1:04d}"
    if not message:
        raise ValueError("a revision needs a message")
    with tempfile.TemporaryDirectory() as tmp:
        if replaced is not None:
            kept = shutil.move(replaced.path, Path(tmp) / Path(replaced.path).name)
        try:
            url = scratch_url or f"sqlite:///{Path(tmp) / 'scratch.sqlite'}"
            upgrade(url)
            engine = _migration_engine(url)
            with engine.connect() as conn:
                written = command.revision(config(conn), message, autogenerate=True, rev_id=rev_id,
                                           process_revision_directives=_keep_nonempty)
            engine.dispose()
        except BaseException:
            if replaced is not None:
                shutil.move(kept, replaced.path)
            raise
        if not written and replaced is not None:  # an empty revision comes back as []
            shutil.move(kept, replaced.path)
    return Path(written.path) if written else None
