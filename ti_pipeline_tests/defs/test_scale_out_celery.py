"""The heavy jobs on real Celery workers, on Redis and on RabbitMQ, and a worker killed mid-step.

Each test starts ``ti-pipeline worker`` (``python -m ti_pipeline.defs.worker``) as a deployment does, runs the
``*_on_celery`` jobs with ``workers: 2`` inside the heavy steps (a process pool in a step on a Celery
worker) and compares what the Celery runs leave — every table row, every exported file — with what
local runs of the same jobs leave on a copy of the same sample data. Nothing here knows row counts: the
local run is the reference, so the sample data may change. Each test uses queues of its own (and on
Redis a database number of its own), so tests run in parallel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, Definitions, execute_job

from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.defs.jobs import JobSpec
from ti_pipeline.defs.sage_dump import SAGE_DUMP_SHARDS
from ti_pipeline.defs.scale_out import reconstructable_job
from ti_pipeline.defs.vt_feed.automation import VT_FILE_REPORTS, VT_LOAD
from ti_pipeline.sample_data.broccoli import sample_vt_sha1s, write_broccoli_objects
from ti_pipeline.sample_data.sage import write_sage_dump
from ti_pipeline.sample_data.vt import write_vt_feed
from ti_pipeline_tests.test_kill_and_rerun import group_exits

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2  # processes inside each heavy step
VT_DAYS = ("2020-11-01", "2020-11-02")
# What the tests run, in this order, each on the Celery variant and locally: (spec, run tags, op config).
RUNS: dict[str, tuple[JobSpec, dict[str, str], dict[str, dict]]] = {
    "vt_export": (
        VT_FILE_REPORTS,
        {"dagster/asset_partition_range_start": VT_DAYS[0], "dagster/asset_partition_range_end": VT_DAYS[1]},
        # The second day's one cut package of four admitted: its blocking check would hold the day back.
        {"vt_feed__vt_file_reports": {"workers": WORKERS, "max_corrupt_share": 0.5}},
    ),
    "dump_shard": (
        SAGE_DUMP_SHARDS,
        {"dagster/partition": "r01"},
        # 1 MiB blocks: the shard's file_rep spans several, so both pool processes decode.
        {op: {"workers": WORKERS, "block_mib": 1} for op in ("sage_dump__ioc_file_hashes", "sage_dump__ioc_domains")},
    ),
    "vt_load": (VT_LOAD, {"dagster/partition": VT_DAYS[0]}, {}),
}
VOLATILE = {"created_at", "updated_at", "recorded_at", "id", "last_updated", "processed_at", "looked_up_at"}
RABBITMQ = "pyamqp://guest:guest@127.0.0.1:5672//"


# ------------------------------------------------------------------------------------- the state

def table_state(data_dir: Path, also: tuple[Path, ...] = ()) -> dict[str, list[tuple]]:
    """Every table's rows without the columns that record when (not what) was written; the data
    directory (and the ones in ``also``, where earlier runs of the rows happened) reads ``<data>``."""
    conn = sqlite3.connect(data_dir / "warehouse.sqlite")
    state = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        cursor = conn.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from sqlite_master
        keep = [i for i, d in enumerate(cursor.description) if d[0] not in VOLATILE]
        state[table] = sorted(tuple(_data(repr(row[i]), (data_dir, *also)) for i in keep) for row in cursor)
    conn.close()
    return state


def _data(text: str, dirs: tuple[Path, ...]) -> str:
    for data_dir in sorted(map(str, dirs), key=len, reverse=True):  # a/b-c before a/b
        text = text.replace(data_dir, "<data>")
    return text


def export_state(data_dir: Path) -> dict[str, object]:
    """Every exported file's bytes (digest); manifests without their store generations. The Broccoli
    sidecar records when each lookup was made, so it is compared through the load's rows instead."""
    state: dict[str, object] = {}
    for path in sorted((data_dir / "export").rglob("*")):
        name = path.relative_to(data_dir).as_posix()
        if not path.is_file() or "broccoli_classifications/" in name:
            continue
        if path.name == "_SUCCESS":
            manifest = json.loads(path.read_text())
            for part in manifest.get("parts", []):
                part.pop("generation", None)
            state[name] = manifest
        else:
            state[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def state(data_dir: Path, also: tuple[Path, ...] = ()) -> tuple:
    return table_state(data_dir, also), export_state(data_dir)


@contextlib.contextmanager
def ti_env(data_dir: Path) -> Iterator[None]:
    """This process's environment with TI_DATA_DIR = ``data_dir`` and no other TI_* setting."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("TI_")]:
        del os.environ[name]
    os.environ["TI_DATA_DIR"] = str(data_dir)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_config(ops: dict[str, dict]) -> dict:
    return {"ops": {op: {"config": config} for op, config in ops.items()}}


# ------------------------------------------------------------------------------ the local reference

@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("celery-sample")
    write_vt_feed(LocalStore(base / "vt_feed"))
    write_sage_dump(LocalStore(base / "sage_dump"))
    write_broccoli_objects(LocalStore(base / "broccoli"), sample_vt_sha1s())
    return base


class LocalReference:
    """What local runs of the same jobs leave on a copy of the sample data (each prefix computed once)."""

    def __init__(self, sample: Path, base: Path):
        self.sample, self.base = sample, base
        self.states: dict[tuple[str, ...], tuple] = {}

    def dir_of(self, runs: tuple[str, ...]) -> Path:
        return self.base / ("-".join(runs) or "none")

    def state(self, *runs: str) -> tuple:
        if runs not in self.states:
            data_dir = self.dir_of(runs)
            if runs[:-1]:
                self.state(*runs[:-1])
            shutil.copytree(self.dir_of(runs[:-1]) if runs[:-1] else self.sample, data_dir)
            with ti_env(data_dir):
                from ti_pipeline.definitions import defs
                from ti_pipeline.defs.resources import build_resources

                spec, tags, ops = RUNS[runs[-1]]
                # The local job, built from the same spec as its Celery variant, on this directory.
                local = Definitions(assets=list(defs.assets), asset_checks=list(defs.asset_checks),
                                    jobs=[spec.build()], resources=build_resources())
                with DagsterInstance.ephemeral() as instance:
                    result = local.resolve_job_def(spec.name).execute_in_process(
                        run_config=run_config(ops), tags=tags, instance=instance
                    )
                assert result.success, runs
            self.states[runs] = state(data_dir, tuple(self.dir_of(runs[:i]) for i in range(1, len(runs))))
        return self.states[runs]


@pytest.fixture(scope="module")
def local(sample, tmp_path_factory) -> LocalReference:
    return LocalReference(sample, tmp_path_factory.mktemp("celery-local"))


# ------------------------------------------------------------------------------------ the brokers

def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def need(port: int, service: str) -> None:
    """The service on 127.0.0.1:``port``, started by scripts/services.sh if it is not running; in CI
    its absence fails the test, elsewhere it skips it."""
    if port_open(port):
        return
    subprocess.run(["bash", str(ROOT / "scripts/services.sh"), service], timeout=300, check=False)
    if port_open(port):
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but no {service} answers on 127.0.0.1:{port} (scripts/services.sh {service} failed)")
    pytest.skip(f"no {service} on 127.0.0.1:{port}")


# ----------------------------------------------------------------------------------- the workers

class Deployment:
    """A Dagster instance, a data directory, and the ``execution`` config the runs and workers share."""

    def __init__(self, tmp_path: Path, sample: Path, broker: dict[str, str], **executor: object):
        self.tmp = tmp_path
        self.data = tmp_path / "ti_data"
        shutil.copytree(sample, self.data)
        self.home = tmp_path / "dagster_home"
        self.home.mkdir()
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        tag = uuid.uuid4().hex[:8]
        self.queues = {"heavy_queue": f"ti-test-{tag}-heavy", "warehouse_queue": f"ti-test-{tag}-warehouse"}
        self.execution = {"execution": {"config": {**broker, **self.queues, **executor}}}
        self.config = tmp_path / "celery.yaml"
        self.config.write_text(yaml.safe_dump(self.execution))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TI_")}
        self.env.update(TI_DATA_DIR=str(self.data), DAGSTER_HOME=str(self.home))
        with DagsterInstance.from_config(str(self.home)):  # storage created before the worker opens it
            pass

    @contextlib.contextmanager
    def worker(self, processes: int = 1, failpoints: str = "", name: str = "w",
               queues: tuple[str, ...] = ("heavy", "warehouse")) -> Iterator[subprocess.Popen]:
        """``ti-pipeline worker`` (on both queues of the config unless told others), in a process group
        of its own; stopped afterwards."""
        log = self.tmp / f"{name}.log"
        env = {**self.env, **({"TI_FAILPOINTS": failpoints} if failpoints else {})}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ti_pipeline.defs.worker", "-y", str(self.config), *(f"-q{q}" for q in queues),
                 "--processes", str(processes), "--name", f"{name}-{uuid.uuid4().hex[:6]}@%h"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        proc.log = log  # type: ignore[attr-defined]
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    @staticmethod
    def wait_ready(proc: subprocess.Popen, processes: int = 1) -> None:
        deadline = time.monotonic() + 300
        while proc.log.read_bytes().count(b" ready.") < processes:  # type: ignore[attr-defined]
            assert proc.poll() is None, proc.log.read_text()[-3000:]  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the Celery worker did not become ready"
            time.sleep(0.2)

    def run(self, name: str, **executor: object):
        """The Celery variant of RUNS[name], executed through the workers; returns (success, events)."""
        spec, tags, ops = RUNS[name]
        config = {"execution": {"config": {**self.execution["execution"]["config"], **executor}}, **run_config(ops)}
        with DagsterInstance.from_config(str(self.home)) as instance:
            result = execute_job(reconstructable_job(spec.variant_name("on_celery")), instance=instance,
                                 run_config=config, tags=tags, raise_on_error=False)
            return result.success, result.all_events

    def delete_queues(self) -> None:
        from kombu import Connection

        with contextlib.suppress(Exception), Connection(self.execution["execution"]["config"]["broker"]) as conn:
            channel = conn.channel()
            for queue in self.queues.values():
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)


def kill_group_when_leader_dies(proc: subprocess.Popen) -> None:
    """SIGKILL the whole process group the moment its leader (the worker) is gone: the step's pool
    processes die with it, as when a pod or a host is lost."""
    while proc.poll() is None:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def submitted_queues(events) -> dict[str, str]:
    """Step key -> the queue its task was submitted to (from the executor's engine events)."""
    queues = {}
    for event in events:
        message = event.message or ""
        if event.event_type == DagsterEventType.ENGINE_EVENT and message.startswith("Submitting celery task"):
            queues[event.step_key] = message.rsplit('queue "', 1)[1].rstrip('".')
    return queues


# ---------------------------------------------------------------------------------------- the tests

def run_all(deployment: Deployment, worker: subprocess.Popen, runs: tuple[str, ...]) -> None:
    """The Celery variants of ``runs`` in order: each succeeds, every step runs in a worker process
    and goes to the queue of its kind."""
    worker_pids = {worker.pid} | {p.pid for p in psutil.Process(worker.pid).children()}
    step_pids, queues = set(), {}
    for name in runs:
        success, events = deployment.run(name)
        assert success, (name, worker.log.read_text()[-5000:])  # type: ignore[attr-defined]
        step_pids |= {e.pid for e in events if e.event_type == DagsterEventType.STEP_START}
        queues |= submitted_queues(events)
    assert step_pids and step_pids <= worker_pids  # every step ran in a worker process, none here
    heavy, warehouse = deployment.queues["heavy_queue"], deployment.queues["warehouse_queue"]
    expected_queues = {"vt_feed__vt_file_reports": heavy, "sage_dump__ioc_file_hashes": heavy, "sage_dump__ioc_domains": heavy,
                       "vt_feed__broccoli_classifications": warehouse, "vt_feed__ioc_file_hashes": warehouse}
    assert queues == {step: queue for step, queue in expected_queues.items() if step in queues}
    assert set(queues) >= {"vt_feed__vt_file_reports", "sage_dump__ioc_file_hashes", "sage_dump__ioc_domains"}


def test_on_rabbitmq_the_vt_range_and_a_dump_shard_equal_a_local_run(tmp_path, sample, local):
    """RabbitMQ (guest/guest on loopback, rpc result backend), one worker process on both queues: a
    2-day VT export range and one dump shard, each heavy step with a pool of 2 processes, leave
    exactly the rows and files that local runs of the same jobs leave."""
    need(5672, "rabbitmq")
    deployment = Deployment(tmp_path, sample, {"broker": RABBITMQ, "backend": "rpc://"})
    runs = ("vt_export", "dump_shard")
    try:
        with deployment.worker() as worker:
            expected = local.state(*runs)  # computed while the worker starts
            deployment.wait_ready(worker)
            run_all(deployment, worker, runs)
        got = state(deployment.data)
        assert got[1] and any(rows for rows in got[0].values())  # the runs did write something
        assert got == expected
    finally:
        deployment.delete_queues()


def test_on_redis_heavy_jobs_equal_a_local_run_and_a_worker_killed_mid_step_fails_only_its_run(tmp_path, sample, local):
    """Redis, two worker processes (``--processes 2``) on both queues: a 2-day VT export range, one
    dump shard (each heavy step with a pool of 2) and the VT load of a day on the warehouse queue leave
    exactly what local runs leave. Then the VT range again on a worker that is SIGKILLed, with its
    whole process group, after the first Parquet part: the run fails naming the lost worker and the
    step, and the re-run on the other workers leaves again exactly what the local runs leave."""
    need(6379, "redis")
    redis = "redis://127.0.0.1:6379/11"
    deployment = Deployment(tmp_path, sample, {"broker": redis, "backend": redis})
    doomed_queue = deployment.queues["heavy_queue"] + "-doomed"
    try:
        with deployment.worker(processes=2) as worker, \
                deployment.worker(failpoints="vt_export.part_written=kill", name="doomed", queues=(doomed_queue,)) as doomed:
            expected = local.state(*RUNS)  # computed while the workers start
            deployment.wait_ready(worker, processes=2)
            run_all(deployment, worker, tuple(RUNS))
            assert state(deployment.data) == expected

            deployment.wait_ready(doomed)
            killer = threading.Thread(target=kill_group_when_leader_dies, args=(doomed,), daemon=True)
            killer.start()
            success, events = deployment.run("vt_export", heavy_queue=doomed_queue, worker_lost_after_seconds=5)
            killer.join(10)
            assert doomed.returncode == -signal.SIGKILL  # killed at the failpoint, mid-step
            assert group_exits(doomed.pid)
            assert not success
            failures = [e for e in events if e.event_type == DagsterEventType.STEP_FAILURE]
            assert [e.step_key for e in failures] == ["vt_feed__vt_file_reports"]
            error = failures[0].step_failure_data.error.message
            assert "was lost while it ran step vt_feed__vt_file_reports" in error and "doomed-" in error, error
            assert [e for e in events if e.event_type == DagsterEventType.RUN_FAILURE]

            success, _ = deployment.run("vt_export")
            assert success, worker.log.read_text()[-5000:]
        assert state(deployment.data) == expected
    finally:
        deployment.queues["doomed"] = doomed_queue
        deployment.delete_queues()


def _pool_in_a_daemon(conn) -> None:
    from ti_pipeline.core.procpool import spawn_pool

    try:
        spawn_pool(2)
        conn.send("started")
    except RuntimeError as exc:
        conn.send(str(exc))


def test_a_step_pool_in_a_daemonic_process_says_how_to_run_the_worker():
    """What a heavy step meets in a child of Celery's default prefork pool: a message naming the fix,
    not multiprocessing's bare assertion."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_pool_in_a_daemon, args=(child,), daemon=True)
    proc.start()
    message = parent.recv()
    proc.join(30)
    assert "daemonic" in message and "ti-pipeline worker" in message, message


def test_a_step_goes_to_its_op_queue_else_its_runs_else_heavy_or_warehouse():
    from ti_pipeline.defs.scale_out import step_queue

    heavy = {"ti_pipeline/heavy": "vt_decompress"}
    assert step_queue({}, heavy, "h", "w") == "h"  # a run of a heavy job
    assert step_queue(heavy, {}, "h", "w") == "h"  # a heavy op in any run
    assert step_queue({}, {}, "h", "w") == "w"
    assert step_queue({}, {**heavy, "dagster-celery/queue": "q"}, "h", "w") == "q"
    assert step_queue({"dagster-celery/queue": "op"}, {"dagster-celery/queue": "q"}, "h", "w") == "op"
