"""A run killed with SIGKILL is marked FAILURE by run monitoring and frees its warehouse_writes slot.

The run is a real ``dagster asset materialize`` on a DAGSTER_HOME holding this repository's
dagster.yaml. ``TI_FAILPOINTS=sage.block_written=stop`` halts the step right after its first warehouse
write, so it holds its pool slot for sure; the test then SIGKILLs the whole process group, as the OOM
killer or ``kill -9`` would: nothing reports the run's end. One iteration of the monitoring daemon
(the same two functions ``dagster-daemon`` runs) must then fail the run and free the slot.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._daemon.monitoring import concurrency as slots_monitoring
from dagster._daemon.monitoring import execute_concurrency_slots_iteration, execute_run_monitoring_iteration

from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.sample_data.sage import dump_name, extension_docs, write_dump_file

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
POOL = "warehouse_writes"
LOG = logging.getLogger("run_monitoring_test")


class DaemonContext:
    """What the monitoring daemon's iterations read from their workspace context (no resume: no workspace)."""

    def __init__(self, instance: DagsterInstance):
        self.instance = instance

    def create_request_context(self):
        return None


def wait_for(condition, what: str, within: float = 60.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_a_killed_run_is_failed_by_run_monitoring_and_frees_its_pool_slot(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    store = LocalStore(tmp_path / "dump")
    write_dump_file(store, dump_name("r04", "FILE_EXTENSION_CLASSIFICATION"), extension_docs(10))
    env = {**os.environ, "DAGSTER_HOME": str(home), "TI_DATA_DIR": str(tmp_path), "TI_SAGE_DUMP_URI": store.uri,
           "TI_FAILPOINTS": "sage.block_written=stop"}
    env.pop("TI_WAREHOUSE_URL", None)
    args = [DAGSTER, "asset", "materialize", "-m", "ti_pipeline.definitions",
            "--select", "sage_dump/file_extension_classification"]
    log = tmp_path / "materialize.log"
    with DagsterInstance.from_config(str(home)) as instance, open(log, "ab") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)
        try:
            claimed = wait_for(lambda: instance.event_log_storage.get_concurrency_info(POOL).claimed_slots,
                               f"the run to claim a {POOL} slot\n{log.read_text()[-3000:]}")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        [run] = instance.get_runs()
        assert [slot.run_id for slot in claimed] == [run.run_id]
        # Killed: nothing reported the end; without monitoring it would stay STARTED forever.
        assert run.status == DagsterRunStatus.STARTED

        list(execute_run_monitoring_iteration(DaemonContext(instance), LOG))
        run = instance.get_run_by_id(run.run_id)
        assert run.status == DagsterRunStatus.FAILURE
        [failure] = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
        assert "is gone" in failure.message, failure.message
        assert instance.event_log_storage.get_concurrency_info(POOL).claimed_slots  # held until the grace period

        # The slot is freed free_slots_after_run_end_seconds (dagster.yaml) after the run's end.
        grace = instance.run_monitoring_settings["free_slots_after_run_end_seconds"]
        real_now = slots_monitoring.get_current_datetime
        monkeypatch.setattr(slots_monitoring, "get_current_datetime", lambda: real_now() + timedelta(seconds=grace + 1))
        list(execute_concurrency_slots_iteration(DaemonContext(instance), LOG))
        info = instance.event_log_storage.get_concurrency_info(POOL)
        assert (info.claimed_slots, info.pending_steps) == ([], [])
