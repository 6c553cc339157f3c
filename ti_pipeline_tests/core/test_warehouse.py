import threading
from datetime import datetime

import pytest
import sqlalchemy as sa

from ti_pipeline.core import migrations, schema
from ti_pipeline.core.accounting import QuarantineRecord
from ti_pipeline.core.warehouse import MergeRule, Warehouse

NEWER = MergeRule(newer_column="scan_date")


def file_row(positives: int, scan_date: datetime | None, key: int = 1) -> dict:
    return {"sha256": key.to_bytes(32, "big"), "classification": "MALWARE", "source": "VIRUS_TOTAL",
            "scan_date": scan_date, "positives": positives}


def positives(wh: Warehouse) -> list[tuple]:
    t = schema.ioc_file_hashes
    with wh.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(t.c.positives, t.c.scan_date).order_by(t.c.sha256))]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0), (1, 0, 2, 2, 1)])
def test_newest_scan_wins_in_any_order(warehouse, order):
    versions = [file_row(1, datetime(2020, 1, 1)), file_row(2, datetime(2020, 1, 3)), file_row(3, None)]
    for i in order:
        warehouse.upsert(schema.ioc_file_hashes, [versions[i]], NEWER)
    assert positives(warehouse) == [(2, datetime(2020, 1, 3))]


def test_batches_larger_than_one_statement(warehouse_url):
    wh = Warehouse(warehouse_url, batch_rows=7)
    wh.ensure_schema()
    rows = [file_row(i, datetime(2020, 1, 1), key=i) for i in range(1, 51)]
    assert wh.upsert(schema.ioc_file_hashes, rows, NEWER) == 50
    assert wh.upsert(schema.ioc_file_hashes, rows, NEWER) == 50
    assert wh.count(schema.ioc_file_hashes) == 50
    wh.dispose()


def test_protected_source_is_never_overwritten_by_another(warehouse):
    rule = MergeRule(newer_column="last_seen", protected_source="TOKENS")
    dump = {"domain": "a.example", "classification": "MALWARE", "source": "SAGE_DUMP", "last_seen": datetime(2020, 1, 1)}
    token = {"domain": "a.example", "classification": "WHITELIST", "source": "TOKENS", "last_seen": None}
    warehouse.upsert(schema.ioc_domains, [token], rule)
    warehouse.upsert(schema.ioc_domains, [dict(dump, last_seen=datetime(2030, 1, 1))], rule)
    with warehouse.engine.connect() as conn:
        assert conn.execute(sa.select(schema.ioc_domains.c.classification, schema.ioc_domains.c.source)).all() == [
            ("WHITELIST", "TOKENS")]


def test_unknown_protected_source_is_refused(warehouse):
    with pytest.raises(ValueError):
        warehouse.upsert(schema.ioc_domains, [{"domain": "a.b", "classification": "X", "source": "TOKENS"}],
                         MergeRule(protected_source="x' OR 1=1 --"))


def test_hostile_values_are_stored_verbatim(warehouse):
    hostile = "x'); DROP TABLE ioc_tokens; --"
    warehouse.upsert(schema.ioc_tokens, [{"token": hostile, "token_type": "DOMAIN", "response": "malware"}])
    with warehouse.engine.connect() as conn:
        assert conn.execute(sa.select(schema.ioc_tokens.c.token)).scalar_one() == hostile


def test_quarantine_is_replaced_per_asset_partition(warehouse):
    records = [QuarantineRecord("s", "bad", 10, "00"), QuarantineRecord("s", "worse", 20, "ff")]
    for _ in range(2):
        warehouse.clear_quarantine("a", "r01")
        warehouse.add_quarantine("a", "r01", records)
    warehouse.add_quarantine("a", "r02", records[:1])
    assert warehouse.count(schema.quarantine, schema.quarantine.c.partition_key == "r01") == 2
    assert warehouse.count(schema.quarantine) == 3


def test_dropped_connection_mid_load_is_retried(mysql_url):
    """Kill the loader's connection from another session between batches: the load still completes."""
    wh = Warehouse(mysql_url, batch_rows=10)
    migrations.upgrade(mysql_url)
    admin = sa.create_engine(mysql_url)
    killed = []

    def rows():
        for i in range(1, 101):
            if i == 55 and not killed:
                with wh.engine.connect():
                    pass  # make sure the pool holds a connection to kill
                with admin.begin() as conn:
                    ids = conn.execute(sa.text(
                        "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                    )).scalars().all()
                    for cid in ids:
                        conn.execute(sa.text("KILL :cid"), {"cid": cid})
                    killed.extend(ids)
            yield file_row(i, datetime(2020, 1, 1), key=i)

    assert wh.upsert(schema.ioc_file_hashes, rows(), NEWER) == 100
    assert killed
    assert wh.count(schema.ioc_file_hashes) == 100
    admin.dispose()
    wh.dispose()


def test_concurrent_writers_end_with_the_newest(warehouse_url):
    wh = Warehouse(warehouse_url, batch_rows=20)
    wh.ensure_schema()
    days = [datetime(2020, 1, d) for d in range(1, 9)]

    def load(day):
        wh.upsert(schema.ioc_file_hashes, [file_row(day.day, day, key=k) for k in range(1, 61)], NEWER)

    threads = [threading.Thread(target=load, args=(d,)) for d in days]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(positives(wh)) == {(8, datetime(2020, 1, 8))}
    wh.dispose()
