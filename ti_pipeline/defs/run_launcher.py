"""The local instance's run launcher: Dagster's ``DefaultRunLauncher`` plus a run worker health check.

Dagster's run monitoring marks a run FAILURE when its launcher says the run worker is gone, but the
``DefaultRunLauncher`` cannot tell (``supports_check_run_worker_health`` is False), so on a local
instance a run whose process was killed (``kill -9``, OOM killer, a closed laptop lid) stays STARTED
forever and keeps its ``warehouse_writes`` pool slot. This launcher answers the health check from the
run's own event log: the ``RUN_START`` event carries the run worker's pid, and that process must still
exist and have started before the run did (a reused pid is a new process). It covers runs launched from
the UI, schedules, sensors and backfills and ``dagster asset materialize`` runs alike, on the host the
daemon runs on (the local instance runs everything on one machine; production uses the
``K8sRunLauncher``, whose own check asks Kubernetes).
"""

from __future__ import annotations

import psutil
from dagster import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

# A process may start this long (clock resolution, the time between fork and RUN_START) before its run.
_START_SLACK_SECONDS = 5.0


def run_worker_pid(instance, run_id: str) -> tuple[int, float] | None:
    """The pid of the process that started the run, and when (``RUN_START``); None before it started."""
    events = instance.event_log_storage.get_logs_for_run(run_id, of_type={DagsterEventType.RUN_START}, limit=1)
    if not events or events[0].dagster_event is None or events[0].dagster_event.pid is None:
        return None
    return events[0].dagster_event.pid, events[0].timestamp


def process_alive(pid: int, started_by: float) -> bool:
    """Whether ``pid`` is a live (not zombie) process that existed at ``started_by``."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= started_by + _START_SLACK_SECONDS
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # someone else's process with that pid: cannot tell, so do not fail the run


class LocalRunLauncher(DefaultRunLauncher):
    """``DefaultRunLauncher`` whose run workers run monitoring can check (see the module docstring)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        started = run_worker_pid(self._instance, run.run_id)
        if started is None:
            # Not started yet: run monitoring's start timeout covers that; RUNNING = do nothing now.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no RUN_START event yet")
        pid, at = started
        if process_alive(pid, at):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid} is alive")
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"run worker pid {pid} is gone (killed or crashed without reporting the run's end)"
        )
