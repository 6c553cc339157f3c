"""run_retries as both instance configs set it: a lost run is run again, a run whose step failed is not.

The instance is this repository's dagster.yaml in a temporary DAGSTER_HOME (queued runs, the
LocalRunLauncher, run monitoring, run_retries); the code location is loaded as the daemon loads it. The
test drives the daemon's own iterations in turn: the run queue (launches a run worker process), run
monitoring (fails a run whose worker is gone) and automatic re-execution (consumes failed runs).

1. A run stopped mid-step (``TI_FAILPOINTS=sage.block_written=stop``) is SIGKILLed with its step process,
   as the OOM killer would: monitoring fails it, re-execution starts a new run from the failure, tagged
   ``dagster/retry_number=1``; its step stops at the same point and is let go on (SIGCONT): it succeeds.
2. A run whose step failed (here ``no_retry``: the collection's dump file is missing) is not re-run:
   ``retry_on_asset_or_op_failure: false``, since the step's own RetryPolicy already decided.
One code server serves both (each start imports the code location, seconds on a busy machine).
"""

from __future__ import annotations

import logging
import shutil
import signal
from pathlib import Path

import psutil
import pytest
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, RETRY_NUMBER_TAG, WILL_RETRY_TAG
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import (
    consume_new_runs_for_automatic_reexecution,
)
from dagster._daemon.monitoring import execute_run_monitoring_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster_graphql.test.utils import execute_dagster_graphql

from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.defs.run_launcher import run_worker_pid
from ti_pipeline.sample_data.sage import dump_name, extension_docs, write_dump_file
from ti_pipeline_tests.test_run_monitoring import wait_for

ROOT = Path(__file__).resolve().parents[1]
EXTENSIONS = (["sage_dump", "file_extension_classification"],)
TOKENS = (["sage_dump", "ioc_tokens"], ["sage_dump", "ioc_ips"])  # one multi-asset
LOG = logging.getLogger("run_retries_test")
LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
  }
}"""


def test_both_instance_configs_retry_lost_runs_twice_and_never_step_failures():
    sections = [yaml.safe_load((ROOT / path).read_text())["run_retries"]
                for path in ("dagster.yaml", "deploy/dagster.production.yaml")]
    assert sections == [{"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}] * 2


class Daemon:
    """The instance of dagster.yaml, a code server as the daemon runs one, and the daemon's iterations."""

    def __init__(self, instance: DagsterInstance, context):
        self.instance, self.context = instance, context
        self.queue = QueuedRunCoordinatorDaemon(interval_seconds=1)

    def launch(self, assets: tuple[list[str], ...]) -> str:
        """Submit a run of the assets (queued), then the queue's iteration launches its run worker."""
        selector = {"repositoryLocationName": "ti_pipeline", "repositoryName": "__repository__",
                    "jobName": "__ASSET_JOB", "assetSelection": [{"path": path} for path in assets]}
        result = execute_dagster_graphql(self.context.create_request_context(), LAUNCH,
                                         variables={"params": {"selector": selector}})
        assert not result.errors and result.data["launchRun"]["__typename"] == "LaunchRunSuccess", result
        run_id = result.data["launchRun"]["run"]["runId"]
        self.dequeue()
        return run_id

    def dequeue(self) -> None:
        list(self.queue.run_iteration(self.context))

    def finished(self, run_id: str):
        return wait_for(lambda: (run := self.instance.get_run_by_id(run_id)).is_finished and run, f"run {run_id} to end")

    def stopped_step(self, run_id: str) -> tuple[psutil.Process, psutil.Process]:
        """The run's worker and its step process, stopped at the failpoint."""
        pid, _ = wait_for(lambda: run_worker_pid(self.instance, run_id), "the run worker to start")
        worker = psutil.Process(pid)
        step = wait_for(lambda: next((p for p in worker.children(recursive=True) if p.status() == psutil.STATUS_STOPPED), None),
                        "the step to stop at its failpoint")
        return worker, step

    def retry(self, run_id: str) -> None:
        """The automatic re-execution daemon's pass over the failed run."""
        list(consume_new_runs_for_automatic_reexecution(self.context, [self.instance.get_run_record_by_id(run_id)], LOG))

    def runs_of(self, assets: tuple[list[str], ...]) -> list:
        return [r for r in self.instance.get_runs() if r.asset_selection == {AssetKey(path) for path in assets}]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_retries")
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    dump = LocalStore(tmp / "dump")
    write_dump_file(dump, dump_name("r04", "FILE_EXTENSION_CLASSIFICATION"), extension_docs(10))
    target = ModuleTarget("ti_pipeline.definitions", "defs", str(ROOT), "ti_pipeline")
    with pytest.MonkeyPatch.context() as env:
        # Set before the code server starts: its run workers inherit its environment.
        env.setenv("DAGSTER_HOME", str(home))
        env.setenv("TI_DATA_DIR", str(tmp))
        env.delenv("TI_WAREHOUSE_URL", raising=False)
        env.setenv("TI_SAGE_DUMP_URI", dump.uri)
        env.setenv("TI_FAILPOINTS", "sage.block_written=stop")
        with (
            DagsterInstance.from_config(str(home)) as instance,
            create_test_daemon_workspace_context(target, instance) as context,
        ):
            daemon = Daemon(instance, context)
            yield daemon
            daemon.queue._exit_stack.close()


def test_a_killed_run_is_retried_once_and_the_retry_succeeds(daemon: Daemon):
    instance = daemon.instance
    run_id = daemon.launch(EXTENSIONS)
    worker, step = daemon.stopped_step(run_id)
    for process in (step, worker):  # as the OOM killer or `kill -9` would
        process.kill()
    wait_for(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, "the run worker to die")
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED  # nothing reported its end

    list(execute_run_monitoring_iteration(daemon.context, LOG))
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE

    daemon.retry(run_id)
    [retried] = [r for r in daemon.runs_of(EXTENSIONS) if r.run_id != run_id]
    assert (retried.tags[RETRY_NUMBER_TAG], retried.tags[PARENT_RUN_ID_TAG]) == ("1", run_id)
    daemon.dequeue()
    _, step = daemon.stopped_step(retried.run_id)
    step.send_signal(signal.SIGCONT)  # the cause has passed
    assert daemon.finished(retried.run_id).status == DagsterRunStatus.SUCCESS
    assert instance.get_run_by_id(run_id).tags[WILL_RETRY_TAG] == "true"
    daemon.retry(run_id)  # a second pass over the same failure starts nothing more
    assert len(daemon.runs_of(EXTENSIONS)) == 2


def test_a_run_whose_step_failed_is_not_retried(daemon: Daemon):
    instance = daemon.instance
    run_id = daemon.launch(TOKENS)  # the dump holds no TOKENS file: a no_retry step failure
    assert daemon.finished(run_id).status == DagsterRunStatus.FAILURE
    [failure] = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    assert "no TOKENS.bson(.gz)" in failure.dagster_event.step_failure_data.error.message

    daemon.retry(run_id)
    assert [r.run_id for r in daemon.runs_of(TOKENS)] == [run_id]
    assert instance.get_run_by_id(run_id).tags[WILL_RETRY_TAG] == "false"
    messages = [e.message for e in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)]
    assert any("retry_on_asset_or_op_failure set to false" in m for m in messages), messages
