"""``Warehouse.partition_lock``: one holder per asset partition, on SQLite (lock file) and MariaDB (GET_LOCK)."""

import threading
import time

import pytest
import sqlalchemy as sa

from ti_pipeline.core import schema
from ti_pipeline.core.warehouse import LOCK_NAME_CHARS, PartitionBusy, Warehouse, lock_name


def holders(wh: Warehouse) -> list[tuple]:
    t = schema.partition_locks
    with wh.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(t.c.asset, t.c.partition_key, t.c.holder))]


def test_a_held_partition_refuses_a_second_holder_and_names_the_first(warehouse, warehouse_url):
    other = Warehouse(warehouse_url)  # another run: its own engine and connections
    with warehouse.partition_lock("vt_feed/vt_file_reports", "2020-11-01", holder="run aaaa"):
        assert holders(warehouse) == [("vt_feed/vt_file_reports", "2020-11-01", "run aaaa")]
        with pytest.raises(PartitionBusy) as refused:
            with other.partition_lock("vt_feed/vt_file_reports", "2020-11-01", holder="run bbbb"):
                pytest.fail("two holders of one partition")
        message = str(refused.value)
        assert message.startswith("vt_feed/vt_file_reports 2020-11-01 is being materialized by another run (run aaaa, since ")
        assert message.endswith("); this run stops without changes")
        # Another day, or the same day of another asset, is not held up.
        with other.partition_lock("vt_feed/vt_file_reports", "2020-11-02", holder="run bbbb"):
            pass
        with other.partition_lock("vt_feed/ioc_file_hashes", "2020-11-01", holder="run bbbb"):
            pass
    assert holders(warehouse) == []
    with other.partition_lock("vt_feed/vt_file_reports", "2020-11-01", holder="run bbbb"):
        assert holders(other) == [("vt_feed/vt_file_reports", "2020-11-01", "run bbbb")]
    other.dispose()


def test_a_waiter_gets_the_lock_once_the_holder_lets_go(warehouse, warehouse_url):
    other = Warehouse(warehouse_url)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with warehouse.partition_lock("sage_dump/ioc_file_hashes", "r01", holder="run aaaa"):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    threading.Timer(1.0, release.set).start()
    started = time.monotonic()
    with other.partition_lock("sage_dump/ioc_file_hashes", "r01", holder="run bbbb", wait_seconds=20):
        waited = time.monotonic() - started
    holder.join()
    other.dispose()
    assert 0.5 < waited < 15


def test_the_lock_is_released_when_the_body_fails(warehouse):
    with pytest.raises(ZeroDivisionError):
        with warehouse.partition_lock("sage_dump/ioc_domains", "r02", holder="run aaaa"):
            raise ZeroDivisionError
    with warehouse.partition_lock("sage_dump/ioc_domains", "r02", holder="run bbbb"):
        pass


def test_long_keys_fit_a_named_lock():
    short = lock_name("db:sage_dump/ioc_file_hashes:r01")
    assert short == "ti:db:sage_dump/ioc_file_hashes:r01"
    long_key = "ti_test_0123456789ab:vt_feed/broccoli_classifications:2020-11-01"
    name = lock_name(long_key)
    assert len(name) == LOCK_NAME_CHARS and name.startswith("ti:ti_test_0123456789ab:vt_feed/")
    assert lock_name(long_key.replace("11-01", "11-02")) != name
