import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

from ti_pipeline.cli import main
from ti_pipeline.core import migrations, schema

TABLES = {t.name for t in schema.metadata.sorted_tables} | {migrations.VERSION_TABLE}


def statements(sql: str) -> list[str]:
    """The statements of Alembic's offline SQL: ``;``-terminated, with ``--`` comment lines between."""
    body = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def run_sql(url: str, sql: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements(sql):
            conn.execute(sa.text(statement))
    engine.dispose()


def created_tables(url: str) -> dict[str, str]:
    """``SHOW CREATE TABLE`` of every table, and the recorded revision."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        tables = {name: conn.execute(sa.text(f"SHOW CREATE TABLE `{name}`")).one()[1]
                  for name in conn.execute(sa.text("SHOW TABLES")).scalars()}
        tables["revision"] = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    return tables


@pytest.fixture
def another_mysql_url(mysql_server_url: str):
    """A second fresh database, beside ``mysql_url``'s."""
    name = f"ti_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{mysql_server_url}/test")
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    yield f"{mysql_server_url}/{name}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


def test_schema_command_prints_ddl_that_runs_on_mysql(capsys, mysql_url):
    assert main(["schema", "--dialect", "mysql"]) == 0
    ddl = capsys.readouterr().out
    assert "sha256 BINARY(32) NOT NULL" in ddl
    assert "CREATE INDEX ix_ioc_file_hashes_sha1 ON ioc_file_hashes (sha1);" in ddl
    run_sql(mysql_url, ddl)
    engine = sa.create_engine(mysql_url)
    with engine.connect() as conn:
        assert set(conn.execute(sa.text("SHOW TABLES")).scalars()) == TABLES
        assert migrations.current(conn) == migrations.head()
    engine.dispose()


def test_the_ddl_a_dba_runs_creates_what_migrate_creates(capsys, mysql_url, another_mysql_url):
    assert main(["migrate", "--url", mysql_url]) == 0
    capsys.readouterr()
    assert main(["schema", "--dialect", "mysql"]) == 0
    run_sql(another_mysql_url, capsys.readouterr().out)
    migrated, reviewed = created_tables(mysql_url), created_tables(another_mysql_url)
    assert set(migrated) == TABLES | {"revision"}
    assert reviewed == migrated


def schema_sql_in_subprocess(prelude: str) -> str:
    code = f"{prelude}\nfrom ti_pipeline.cli import main\nraise SystemExit(main(['schema', '--dialect', 'mysql']))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_ddl_is_the_same_once_dagster_storage_is_loaded():
    """A run's process holds a Dagster instance, whose storage registers MySQL compile hooks for the
    generic DateTime and Float (DATETIME(6), FLOAT(32)): the warehouse DDL must not change with them."""
    with_dagster = schema_sql_in_subprocess(
        "import sys, dagster\n"
        "dagster.DagsterInstance.ephemeral()\n"
        "assert 'dagster._core.storage.sql' in sys.modules"
    )
    assert with_dagster == schema_sql_in_subprocess("")


def test_ensure_schema_is_idempotent(warehouse):
    warehouse.ensure_schema()
    warehouse.ensure_schema()
    assert set(sa.inspect(warehouse.engine).get_table_names()) == TABLES
