"""Two real runs of one partition at once: the second is refused, and the result is a single run's.

Runs go through ``dagster asset materialize`` in child processes, as in test_kill_and_rerun.py. The
first run is stopped inside its partition (``TI_FAILPOINTS=...=stop`` SIGSTOPs its step process while
it holds the partition's lock), the second is started and must fail at once, then the first resumes.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance

from ti_pipeline.cli import main as cli
from ti_pipeline.core import migrations, schema
from ti_pipeline_tests.test_kill_and_rerun import DAGSTER, ROOT, fresh, group_exits, state

DAY = "2020-11-03"  # a sample day whose blocking checks pass (11-02 has one cut package of four)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("sample")
    env = os.environ.copy()
    os.environ["TI_DATA_DIR"] = str(base)
    try:
        cli(["sample-data"])
    finally:
        os.environ.clear()
        os.environ.update(env)
    return base


def start(data_dir: Path, select: str, partition: str, failpoints: str = "", log_name: str = "run.log") -> subprocess.Popen:
    env = {**os.environ, "TI_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(data_dir / "dagster_home"),
           "TI_FAILPOINTS": failpoints}
    (data_dir / "dagster_home").mkdir(exist_ok=True)
    args = [DAGSTER, "asset", "materialize", "-m", "ti_pipeline.definitions", "--select", select, "--partition", partition]
    with open(data_dir / log_name, "ab") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> int:
    proc.wait(timeout=timeout)
    assert group_exits(proc.pid)
    return proc.returncode


def stopped_in(pgid: int) -> bool:
    """Whether a process of the group ``pgid`` is stopped (state T)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "T" and int(fields[2]) == pgid:
            return True
    return False


def wait_until(condition, what: str, within: float = 300) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.parametrize(
    "select, partition, failpoint",
    [
        ("sage_dump/ioc_file_hashes", "r01", "sage.block_written=stop"),
        ("vt_feed/vt_file_reports", DAY, "vt_export.package_decompressed=stop@2"),
    ],
    ids=["dump-shard", "vt-day"],
)
def test_a_second_run_of_a_partition_is_refused_and_changes_nothing(sample, tmp_path, select, partition, failpoint):
    clean, both = fresh(sample, tmp_path / "clean"), fresh(sample, tmp_path / "both")
    assert finish(start(clean, select, partition)) == 0

    first = start(both, select, partition, failpoint, "first.log")
    try:
        wait_until(lambda: stopped_in(first.pid), "the first run to stop inside its partition")
        second = start(both, select, partition, log_name="second.log")
        assert finish(second) != 0, (both / "second.log").read_text()[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert finish(first) == 0, (both / "first.log").read_text()[-3000:]

    refused = (both / "second.log").read_text()
    assert f"{select} {partition} is being materialized by another run (run " in refused
    assert "this run stops without changes" in refused
    assert state(both) == state(clean)


def test_two_first_runs_on_a_fresh_sqlite_warehouse_both_succeed(sample, tmp_path):
    """Both create the tables at once (the migration's lock file), then load their own shard."""
    data_dir = fresh(sample, tmp_path / "data")
    assert not (data_dir / "warehouse.sqlite").exists()
    # The Dagster instance's own SQLite storage is not safe to create from two processes at once (both
    # stamp its alembic_version): create it first, as `dagster dev` or the daemon would have.
    (data_dir / "dagster_home").mkdir()
    DagsterInstance.from_config(str(data_dir / "dagster_home")).dispose()
    runs = [start(data_dir, "sage_dump/ioc_domains", shard, log_name=f"{shard}.log") for shard in ("r01", "r02")]
    assert [finish(run) for run in runs] == [0, 0], (data_dir / "r02.log").read_text()[-3000:]
    engine = sa.create_engine(f"sqlite:///{data_dir / 'warehouse.sqlite'}")
    with engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()
        shards = conn.execute(sa.select(sa.func.count()).select_from(schema.ioc_domains)).scalar_one()
    engine.dispose()
    assert shards > 0


def test_two_first_migrations_on_a_fresh_mariadb_both_succeed(mysql_url):
    """A server's first run is `ti-pipeline migrate` (a run only checks the revision): two at once both succeed."""
    cli = str(Path(sys.executable).with_name("ti-pipeline"))
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def migrate() -> None:
        barrier.wait()
        codes.append(subprocess.run([cli, "migrate", "--url", mysql_url], capture_output=True, timeout=300).returncode)

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0, 0]
    engine = sa.create_engine(mysql_url)
    with engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()
    engine.dispose()
