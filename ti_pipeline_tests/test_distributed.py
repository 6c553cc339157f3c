"""A real job through a real Celery worker on the Redis broker on loopback."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable

from ti_pipeline.distributed import celery_job
from ti_pipeline.objectstore import LocalStore
from ti_pipeline.sample_data.sage import dump_name, extension_docs, token_docs, write_dump_file

REDIS = ("127.0.0.1", 6379)


@pytest.fixture
def redis_url() -> str:
    try:
        socket.create_connection(REDIS, timeout=1).close()
    except OSError:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no Redis answers on 127.0.0.1:6379")
        pytest.skip("no Redis on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/11"


def test_small_collections_run_on_a_celery_worker(tmp_path: Path, monkeypatch, redis_url: str):
    home, data = tmp_path / "dagster_home", tmp_path / "ti_data"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dump = LocalStore(data / "sage_dump")
    write_dump_file(dump, dump_name("r01", "TOKENS"), token_docs(40))
    write_dump_file(dump, dump_name("r04", "FILE_EXTENSION_CLASSIFICATION"), extension_docs(12))
    env = {"DAGSTER_HOME": str(home), "TI_DATA_DIR": str(data)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    DagsterInstance.get().dispose()  # create the instance's storage before the worker opens it too
    queue = f"ti-test-{uuid.uuid4().hex[:8]}"
    (tmp_path / "celery.yaml").write_text(f"execution:\n  config:\n    broker: {redis_url}\n    backend: {redis_url}\n")
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-celery")), "worker", "start", "-A", "dagster_celery.app",
         "-y", str(tmp_path / "celery.yaml"), "-q", queue, "-n", f"{queue}@%h", "--", "--concurrency", "1"],
        env={**os.environ, **env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while b" ready." not in (tmp_path / "worker.log").read_bytes():
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Celery worker did not become ready"
            time.sleep(0.2)
        run_config = {
            "execution": {"config": {"broker": redis_url, "backend": redis_url,
                                     "config_source": {"task_default_queue": queue}}},
            "ops": {op: {"config": {"workers": 1}} for op in ("ioc_tokens", "sage_dump__file_extension_classification")},
        }
        with DagsterInstance.get() as instance:
            result = execute_job(reconstructable(celery_job), instance=instance, run_config=run_config)
            assert result.success, (tmp_path / "worker.log").read_text()[-3000:]
            step_pids = {e.pid for e in result.all_events if e.event_type == DagsterEventType.STEP_START}
            submitted = [e for e in result.all_events if e.event_type == DagsterEventType.ENGINE_EVENT
                         and "celery" in (e.message or "").lower()]
        assert step_pids and os.getpid() not in step_pids  # steps ran in the worker, not here
        assert submitted
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    engine = sa.create_engine(f"sqlite:///{data / 'warehouse.sqlite'}")
    with engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one()  # noqa: S608 - fixed names
                  for t in ("ioc_tokens", "ioc_ips", "file_extension_classification")}
    engine.dispose()
    assert counts == {"ioc_tokens": 38, "ioc_ips": 8, "file_extension_classification": 11}
