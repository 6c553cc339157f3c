import logging
import pprint
import shutil
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ti_pipeline.cli import main
from ti_pipeline.core import migrations, schema
from ti_pipeline.core.warehouse import Warehouse

TABLES = {t.name for t in schema.metadata.sorted_tables} | {migrations.VERSION_TABLE}


def differences(url: str, metadata: sa.MetaData) -> list:
    """What autogenerate would put in a new revision for ``metadata`` against the database at ``url``."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = compare_metadata(MigrationContext.configure(conn, opts=migrations.context_options()), metadata)
    engine.dispose()
    return found


def revision_of(url: str) -> str | None:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        revision = migrations.current(conn)
    engine.dispose()
    return revision


def changed_schema(*, new_enum_value: bool = True) -> sa.MetaData:
    """``schema.metadata`` with a new column, a longer string, a new index and a new ENUM value."""
    changed = sa.MetaData()
    for table in schema.metadata.sorted_tables:
        table.to_metadata(changed)
    sync_state = changed.tables["sync_state"]
    sync_state.append_column(sa.Column("etag", sa.String(64)))
    sa.Index("ix_sync_state_synced_at", sync_state.c.synced_at)
    changed.tables["ioc_ips"].c.malicious_type.type = sa.String(96)
    if new_enum_value:
        changed.tables["customer_ioc"].c.action.type = sa.Enum("BLOCK", "ALLOW", "WATCH", name="customer_action")
    return changed


@pytest.fixture(params=["sqlite", "mysql"])
def empty_url(request) -> str:
    """A new database of each dialect, not migrated (unlike ``warehouse_url``)."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def script_copy(tmp_path, monkeypatch) -> Path:
    """The migrations folder copied to a temporary place, so a test can write revisions there."""
    location = tmp_path / "migrations"
    shutil.copytree(migrations.SCRIPT_LOCATION, location, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrations, "SCRIPT_LOCATION", location)
    return location


def test_migrations_create_exactly_the_schema(empty_url):
    """A schema change without a revision fails here, with the revision autogenerate would write."""
    assert migrations.upgrade(empty_url) == (None, migrations.head())
    found = differences(empty_url, schema.metadata)
    assert found == [], (
        "schema.metadata differs from the migrations; add a revision with "
        f"`ti-pipeline migrate --revision -m MESSAGE`:\n{pprint.pformat(found)}"
    )


def test_the_comparison_sees_schema_changes(empty_url):
    migrations.upgrade(empty_url)
    found = differences(empty_url, changed_schema())
    assert sorted(d[0] for d in found if isinstance(d, tuple)) == ["add_column", "add_index"]
    modified = {(d[0][0], d[0][2], d[0][3]) for d in found if isinstance(d, list)}
    expected = {("modify_type", "ioc_ips", "malicious_type")}
    if not empty_url.startswith("sqlite"):  # SQLite stores an ENUM as VARCHAR of its longest value
        expected.add(("modify_type", "customer_ioc", "action"))
    assert modified == expected


def test_a_revision_generated_on_sqlite_runs_on_both(script_copy, monkeypatch, capsys, empty_url):
    first = migrations.head()
    assert main(["migrate", "--revision", "-m", "nothing"]) == 0
    assert capsys.readouterr().out == "no change between schema.metadata and the migrations: nothing written\n"

    monkeypatch.setattr(schema, "metadata", changed_schema(new_enum_value=False))
    assert main(["migrate", "--revision", "-m", "sync etag"]) == 0
    second = f"{int(first) + 1:04d}"
    written = script_copy / "versions" / f"{second}_sync_etag.py"
    assert capsys.readouterr().out == f"{written}\n"
    assert f"down_revision: str | Sequence[str] | None = {first!r}" in written.read_text()
    assert migrations.head() == second

    assert migrations.upgrade(empty_url) == (None, second)
    assert differences(empty_url, schema.metadata) == []


def test_a_revision_generated_on_mariadb_adds_an_enum_value(script_copy, monkeypatch, capsys, mysql_url, sqlite_url):
    monkeypatch.setattr(schema, "metadata", changed_schema())
    assert main(["migrate", "--revision", "-m", "watch", "--url", mysql_url]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert "'BLOCK', 'ALLOW', 'WATCH'" in written.read_text()
    for url in (mysql_url, sqlite_url):
        assert migrations.upgrade(url)[1] == migrations.head()
        assert differences(url, schema.metadata) == []


def test_replace_regenerates_the_newest_revision_in_place(script_copy, monkeypatch, capsys):
    files = sorted((script_copy / "versions").iterdir())
    newest = migrations.scripts().get_revision("head")
    monkeypatch.setattr(schema, "metadata", changed_schema())

    assert main(["migrate", "--revision", "--replace"]) == 0
    assert capsys.readouterr().out == f"{newest.path}\n"
    assert sorted((script_copy / "versions").iterdir()) == files
    assert "sa.Column('etag', sa.String(length=64), nullable=True)" in Path(newest.path).read_text()
    assert migrations.head() == newest.revision


def test_revision_needs_a_message(capsys):
    assert main(["migrate", "--revision"]) == 2
    assert capsys.readouterr().err == "error: --revision needs -m MESSAGE (or --replace)\n"


def test_the_embedded_sqlite_upgrades_itself(sqlite_url):
    wh = Warehouse(sqlite_url)
    wh.ensure_schema()
    assert set(sa.inspect(wh.engine).get_table_names()) == TABLES
    assert revision_of(sqlite_url) == migrations.head()
    wh.ensure_schema()
    wh.dispose()


def test_a_server_that_was_not_migrated_is_refused_and_left_alone(mysql_url):
    wh = Warehouse(mysql_url)
    with pytest.raises(migrations.SchemaOutOfDate) as refused:
        wh.ensure_schema()
    assert str(refused.value) == (
        f"warehouse at revision none, code expects {migrations.head()}: run `ti-pipeline migrate`")
    assert sa.inspect(wh.engine).get_table_names() == []
    wh.dispose()


def test_a_server_after_migrate_is_used(mysql_url, capsys):
    assert main(["migrate", "--url", mysql_url]) == 0
    assert capsys.readouterr().out == f"warehouse: {mysql_url}\nrevision: none -> {migrations.head()}\n"
    wh = Warehouse(mysql_url)
    wh.ensure_schema()
    assert set(sa.inspect(wh.engine).get_table_names()) == TABLES
    wh.dispose()
    assert main(["migrate", "--url", mysql_url]) == 0
    assert capsys.readouterr().out == f"warehouse: {mysql_url}\nrevision: {migrations.head()} (already at head)\n"


def test_a_server_migrated_by_a_newer_release_is_refused(mysql_url):
    migrations.upgrade(mysql_url)
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    wh = Warehouse(mysql_url)
    with pytest.raises(migrations.SchemaOutOfDate) as refused:
        wh.ensure_schema()
    assert str(refused.value) == (
        "warehouse at revision 9999, which this code does not know (a newer release migrated it?); "
        f"code expects {migrations.head()}")
    wh.dispose()


def test_migrate_defaults_to_the_configured_warehouse(sqlite_url, capsys, monkeypatch):
    monkeypatch.setenv("TI_WAREHOUSE_URL", sqlite_url)
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out == f"warehouse: {sqlite_url}\nrevision: none -> {migrations.head()}\n"
    assert revision_of(sqlite_url) == migrations.head()


def test_migrate_does_not_print_the_password(capsys):
    with pytest.raises(sa.exc.OperationalError):
        main(["migrate", "--url", "mysql+pymysql://ti:secret@127.0.0.1:1/warehouse"])
    assert capsys.readouterr().out == "warehouse: mysql+pymysql://ti:***@127.0.0.1:1/warehouse\n"


def lock_waiters(admin: sa.Connection) -> int:
    return admin.execute(sa.text(
        "SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE() AND state = 'User lock'"
    )).scalar_one()


def test_two_concurrent_migrations_on_mariadb_end_at_head(mysql_url):
    """Both wait on the named lock (held here), then run one after the other: one upgrades, the other
    finds the database at head."""
    results: list[tuple] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            results.append(migrations.upgrade(mysql_url))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    engine = sa.create_engine(mysql_url)
    threads = [threading.Thread(target=migrate) for _ in range(2)]
    with engine.connect() as admin, migrations._migration_lock(admin):
        for t in threads:
            t.start()
        for _ in range(3000):
            if lock_waiters(admin) == 2:
                break
            time.sleep(0.01)
        assert lock_waiters(admin) == 2
    for t in threads:
        t.join()
    engine.dispose()
    assert errors == []
    head = migrations.head()
    assert sorted(results, key=lambda r: r[0] or "") == [(None, head), (head, head)]
    assert differences(mysql_url, schema.metadata) == []


def test_a_migrator_gives_up_when_the_lock_stays_taken(mysql_url, monkeypatch):
    monkeypatch.setattr(migrations, "LOCK_TIMEOUT_SECONDS", 0)
    engine = sa.create_engine(mysql_url)
    with engine.connect() as admin, migrations._migration_lock(admin):
        with pytest.raises(TimeoutError, match="another `ti-pipeline migrate` held the migration lock for 0s"):
            migrations.upgrade(mysql_url)
    engine.dispose()
    assert revision_of(mysql_url) is None


def test_an_in_memory_sqlite_warehouse_is_refused():
    with pytest.raises(ValueError, match="the embedded warehouse needs a file, not 'sqlite://'"):
        Warehouse("sqlite://").ensure_schema()


def test_two_concurrent_migrations_on_sqlite_end_at_head(sqlite_url):
    results: list[tuple] = []
    start = threading.Barrier(2)

    def migrate() -> None:
        start.wait()
        results.append(migrations.upgrade(sqlite_url))

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    head = migrations.head()
    assert sorted(results, key=lambda r: r[0] or "") == [(None, head), (head, head)]
    assert differences(sqlite_url, schema.metadata) == []


def test_alembic_does_not_log_progress():
    """Its INFO lines (context impl, each upgrade step) would go to whatever handler a run configured."""
    assert not logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.INFO)


def test_a_warehouse_set_up_before_migrations_is_stamped_only_when_its_tables_equal_the_schema(empty_url, capsys):
    engine = sa.create_engine(empty_url)
    schema.metadata.create_all(engine)  # what releases before the migrations did on first use
    assert main(["migrate", "--url", empty_url]) == 1
    refused = capsys.readouterr().err
    assert "but no schema revision: it was set up before migrations" in refused
    assert "ti-pipeline migrate --stamp" in refused
    assert revision_of(empty_url) is None

    assert main(["migrate", "--url", empty_url, "--stamp"]) == 0
    assert capsys.readouterr().out.endswith(f"revision: none -> {migrations.head()}\n")
    assert revision_of(empty_url) == migrations.head()
    engine.dispose()


def test_a_pre_migration_warehouse_that_differs_is_not_stamped(empty_url, capsys):
    engine = sa.create_engine(empty_url)
    schema.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE sync_state ADD COLUMN etag VARCHAR(64)"))
    assert main(["migrate", "--url", empty_url, "--stamp"]) == 1
    refused = capsys.readouterr().err
    assert f"warehouse tables differ from revision {migrations.head()}, not stamped:" in refused
    assert "etag" in refused
    assert revision_of(empty_url) is None
    engine.dispose()


# ---- natural keys compared byte for byte (revision 0003) ------------------------------------------------

KEY_VARIANTS = ["asnarok", "asnarök", "Asnarok"]  # differ only in accent or case


def key_collations(url: str) -> dict[tuple[str, str], str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
        )).all()
    engine.dispose()
    keys = {(t.name, c.name) for t in schema.metadata.sorted_tables for c in t.primary_key.columns
            if isinstance(c.type, sa.String) and not isinstance(c.type, sa.Enum)}
    return {(table, column): collation for table, column, collation in rows if (table, column) in keys}


def test_every_text_primary_key_is_compared_byte_for_byte_on_mysql(mysql_url):
    migrations.upgrade(mysql_url)
    collations = key_collations(mysql_url)
    assert ("threat_actors", "actor_id") in collations and ("customer_ioc", "value") in collations
    assert set(collations.values()) == {"utf8mb4_bin"}, collations


@pytest.mark.parametrize("dialect", ["sqlite", "mysql"])
def test_keys_that_differ_only_in_case_accent_or_blank_stay_apart(dialect, request):
    url = request.getfixturevalue(f"{dialect}_url")
    migrations.upgrade(url)
    warehouse = Warehouse(url)
    rows = [{"token": key, "token_type": "DOMAIN", "response": "malware"} for key in KEY_VARIANTS]
    warehouse.upsert(schema.ioc_tokens, rows)
    with warehouse.engine.connect() as conn:
        stored = sorted(conn.execute(sa.select(schema.ioc_tokens.c.token)).scalars())
    warehouse.dispose()
    assert stored == sorted(KEY_VARIANTS)


def test_revision_0003_converts_a_warehouse_made_before_it_and_keeps_its_rows(mysql_url):
    from alembic import command

    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        command.upgrade(migrations.config(conn), "0002")
        conn.execute(schema.ioc_tokens.insert(), [{"token": "asnarok", "token_type": "DOMAIN", "response": "malware"}])
    engine.dispose()
    assert key_collations(mysql_url)[("ioc_tokens", "token")] != "utf8mb4_bin"
    assert migrations.upgrade(mysql_url) == ("0002", migrations.head())
    assert set(key_collations(mysql_url).values()) == {"utf8mb4_bin"}
    warehouse = Warehouse(mysql_url)
    warehouse.upsert(schema.ioc_tokens, [{"token": "Asnarok", "token_type": "DOMAIN", "response": "malware"}])
    with warehouse.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(schema.ioc_tokens.c.token)).scalars()) == ["Asnarok", "asnarok"]
    warehouse.dispose()
