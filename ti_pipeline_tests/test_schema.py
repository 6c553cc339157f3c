import sqlalchemy as sa

from ti_pipeline import schema
from ti_pipeline.cli import main


def test_schema_command_prints_ddl_that_runs_on_mysql(capsys, mysql_url):
    assert main(["schema", "--dialect", "mysql"]) == 0
    ddl = capsys.readouterr().out
    assert "sha256 BINARY(32) NOT NULL" in ddl
    assert "CREATE INDEX ix_ioc_file_hashes_sha1 ON ioc_file_hashes (sha1);" in ddl
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        for statement in filter(None, (s.strip() for s in ddl.split(";"))):
            conn.execute(sa.text(statement))
        tables = set(conn.execute(sa.text("SHOW TABLES")).scalars())
    engine.dispose()
    assert tables == {t.name for t in schema.metadata.sorted_tables}


def test_create_schema_is_idempotent(warehouse):
    warehouse.create_schema()
    warehouse.create_schema()
    assert set(sa.inspect(warehouse.engine).get_table_names()) == {t.name for t in schema.metadata.sorted_tables}
