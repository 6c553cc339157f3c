"""SIGKILL a real run at named points of heavy work, re-run it, and compare with an uninterrupted run.

Runs go through the ``dagster asset materialize`` CLI in a child process; ``TI_FAILPOINTS`` makes the
child kill itself exactly at the point named (see ti_pipeline/core/failpoints.py).
"""

import hashlib
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ti_pipeline.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
VOLATILE = {"created_at", "updated_at", "recorded_at", "id", "last_updated", "processed_at", "looked_up_at"}


def materialize(data_dir: Path, select: str, partition: str | None, failpoints: str = "") -> int:
    env = {**os.environ, "TI_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(data_dir / "dagster_home"),
           "TI_FAILPOINTS": failpoints}
    (data_dir / "dagster_home").mkdir(exist_ok=True)
    args = [DAGSTER, "asset", "materialize", "-m", "ti_pipeline.definitions", "--select", select]
    if partition:
        args += ["--partition", partition]
    log = data_dir / "materialize.log"
    with open(log, "ab") as out:  # not a pipe: workers orphaned by the kill would hold it open
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)
        proc.wait(timeout=600)
    assert group_exits(proc.pid), "processes of the killed run outlived it (orphaned pool workers?)"
    # Killed, the step's process dies (the multiprocess executor's run process then fails the run).
    assert (proc.returncode != 0) == bool(failpoints), log.read_text()[-3000:]
    return proc.returncode


def group_exits(pgid: int, within: float = 20.0) -> bool:
    """Whether every process of the run's group is gone within ``within`` seconds (else kill them)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    return False


def table_state(data_dir: Path) -> dict[str, list[tuple]]:
    """Every table's rows without the columns that record when (not what) was written."""
    conn = sqlite3.connect(data_dir / "warehouse.sqlite")
    state = {}
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        cursor = conn.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from sqlite_master
        keep = [i for i, d in enumerate(cursor.description) if d[0] not in VOLATILE]
        state[table] = sorted(tuple(repr(row[i]).replace(str(data_dir), "<data>") for i in keep) for row in cursor)
    conn.close()
    return state


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("sample")
    env = os.environ.copy()
    os.environ["TI_DATA_DIR"] = str(base)
    try:
        # r01's file_rep must span two 4 MiB blocks, for the kill at the second block's write.
        cli(["sample-data", "--docs-per-shard", "4000"])
    finally:
        os.environ.clear()
        os.environ.update(env)
    return base


def fresh(sample: Path, target: Path) -> Path:
    shutil.copytree(sample, target)
    return target


def export_state(data_dir: Path) -> dict[str, object]:
    """Every exported file's bytes (digest), and each manifest without its store generations."""
    state: dict[str, object] = {}
    for path in sorted((data_dir / "export").rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(data_dir).as_posix()
        if path.name == "_SUCCESS":
            manifest = json.loads(path.read_text())
            for part in manifest.get("parts", []):
                part.pop("generation", None)
            state[name] = manifest
        else:
            state[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def state(data_dir: Path) -> tuple:
    # The Broccoli sidecar records when each lookup was made, so its bytes differ between two
    # directories prepared separately; the load it feeds is compared through the tables.
    exports = {k: v for k, v in export_state(data_dir).items() if "broccoli_classifications/" not in k}
    return table_state(data_dir), exports


DAY = "2020-11-03"  # a sample day whose blocking checks pass (11-02 has one cut package of four)


class Uninterrupted:
    """The upstream partitions a case needs, materialized once in one run, and the state an
    uninterrupted run of the case's selection leaves on a copy: cases that share them share the runs."""

    def __init__(self, sample: Path, base: Path):
        self.sample, self.base = sample, base
        self._prepared: dict[tuple, Path] = {}
        self._states: dict[tuple, tuple] = {}
        self._dirs = itertools.count()

    def prepared(self, upstream: list[str], partition: str) -> Path:
        key = (tuple(upstream), partition)
        if key not in self._prepared:
            data_dir = fresh(self.sample, self.base / f"prepared{next(self._dirs)}")
            if upstream:
                materialize(data_dir, ",".join(upstream), partition)
            self._prepared[key] = data_dir
        return self._prepared[key]

    def state(self, upstream: list[str], select: str, partition: str) -> tuple:
        key = (tuple(upstream), select, partition)
        if key not in self._states:
            clean = fresh(self.prepared(upstream, partition), self.base / f"clean{next(self._dirs)}")
            materialize(clean, select, partition)
            self._states[key] = state(clean)
        return self._states[key]


@pytest.fixture(scope="module")
def uninterrupted(sample, tmp_path_factory) -> Uninterrupted:
    return Uninterrupted(sample, tmp_path_factory.mktemp("uninterrupted"))


@pytest.mark.parametrize(
    "prepare, select, partition, failpoints",
    [
        ([], "sage_dump/ioc_file_hashes", "r01", "sage.block_written=kill@2"),
        ([], "vt_feed/vt_file_reports", DAY, "vt_export.package_decompressed=kill@2"),
        ([], "vt_feed/vt_file_reports", DAY, "vt_export.part_written=kill"),
        (["vt_feed/vt_file_reports", "vt_feed/broccoli_classifications"], "vt_feed/ioc_file_hashes", DAY, "load.merge_chunk=kill"),
    ],
    ids=["dump-decode", "vt-decompress", "vt-parquet-write", "load-merge"],
)
def test_killed_run_then_rerun_equals_an_uninterrupted_run(uninterrupted, tmp_path, prepare, select, partition, failpoints):
    killed = fresh(uninterrupted.prepared(prepare, partition), tmp_path / "killed")
    expected = uninterrupted.state(prepare, select, partition)
    before = state(killed)
    materialize(killed, select, partition, failpoints)
    materialize(killed, select, partition)
    assert state(killed) == expected
    assert before != expected  # the run had work to do
