"""``ti-pipeline worker``: a Celery worker for the ``*_on_celery`` jobs (ti_pipeline/defs/scale_out.py).

    ti-pipeline worker -y celery.yaml --queue heavy --processes 4
    ti-pipeline worker -y celery.yaml --queue warehouse

``celery.yaml`` is the ``execution.config`` block the runs use (broker, backend, queue names), so a
worker and the runs that feed it cannot disagree. Each worker process runs one step at a time in a
thread of its own (``--pool threads --concurrency 1``): the step's process pool (``workers``) needs a
non-daemonic parent, which Celery's default prefork children are not ("daemonic processes are not
allowed to have children"), and the worker's main thread stays free to answer the run process's
"are you still running my step?" while the step works. ``--processes N`` starts N such processes
(steps at once on this host); each step then starts its own ``workers`` processes, so size
N x workers to the host's cores. The code location is imported before the first task is taken.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


def load_config(path: str | None, broker: str | None = None, backend: str | None = None) -> dict[str, Any]:
    """The executor config of the ``*_on_celery`` jobs from a run-config YAML (its ``execution.config``
    block, or the file itself when it has none), validated, defaults filled, env references resolved."""
    from dagster._config import post_process_config, validate_config
    from dagster._core.errors import DagsterInvalidConfigError

    from ti_pipeline.defs.scale_out import ti_celery_executor

    raw: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        execution = loaded.get("execution") or {}
        raw = dict(execution.get("config") or ({} if execution else loaded))
    if broker:
        raw["broker"] = broker
    if backend:
        raw["backend"] = backend
    config_type = ti_celery_executor.config_schema.config_type
    validated = validate_config(config_type, raw)
    if not validated.success:
        raise DagsterInvalidConfigError(f"Errors in the Celery executor config {path or ''}", validated.errors, raw)
    return dict(post_process_config(config_type, raw).value)


def worker_app(config: Mapping[str, Any]):
    """The Celery app of a worker: dagster-celery's, with the settings the run process relies on."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    from ti_pipeline.defs.scale_out import OWN_EXECUTOR_KEYS

    stock = {k: v for k, v in config.items() if k not in OWN_EXECUTOR_KEYS and k != "retries"}
    app = make_app(CeleryExecutor.for_cli(**stock).app_args())
    create_task(app)
    broker = str(app.conf.broker_url or "")
    app.conf.update(
        task_track_started=True,  # STARTED + worker hostname: what the run process watches
        worker_prefetch_multiplier=1,
        # Redis only: do not reserve a second step while one runs (another worker may be idle).
        worker_disable_prefetch=broker.startswith(("redis://", "rediss://")),
        broker_connection_retry_on_startup=True,
        # Leave stdout/stderr alone: Dagster captures a step's output by swapping the process's file
        # descriptors (the step's stdout/stderr in the UI, as for local runs); Celery's logging proxy
        # has no descriptor, so with it the captured logs stay empty.
        worker_redirect_stdouts=False,
    )
    return app


def resolve_queues(names: Sequence[str], config: Mapping[str, Any]) -> list[str]:
    """``heavy`` / ``warehouse`` -> the configured queue names; anything else is a queue name."""
    from ti_pipeline.defs.scale_out import QUEUE_KINDS

    return [config[f"{name}_queue"] if name in QUEUE_KINDS else name for name in names]


def run_worker(config: Mapping[str, Any], queues: Sequence[str], name: str, loglevel: str) -> int:
    """One worker process in the foreground (returns when Celery shuts down)."""
    import ti_pipeline.definitions  # noqa: F401 - load the code location now, not in the first step

    app = worker_app(config)
    argv = [
        "worker", "--pool", "threads", "--concurrency", "1", "--queues", ",".join(queues),
        "--hostname", name, "--loglevel", loglevel, "--without-mingle", "--without-gossip",
    ]
    app.worker_main(argv)
    return 0


def supervise(argv: Sequence[str], processes: int, name: str) -> int:
    """``processes`` worker processes (this command with ``--processes 1``) in this process group;
    SIGTERM/SIGINT are passed on (a warm shutdown: running steps finish). When one exits, the others are
    stopped and its exit code returned, for the service manager to restart the lot."""
    children = [
        subprocess.Popen([sys.executable, "-m", "ti_pipeline.defs.worker", *argv, "--processes", "1",
                          "--name", name.replace("@", f"-{i + 1}@", 1)])
        for i in range(processes)
    ]

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    while children:
        pid, status = os.wait()
        exited = [c for c in children if c.pid == pid]
        if not exited:
            continue
        children.remove(exited[0])
        exited[0].returncode = os.waitstatus_to_exitcode(status)
        if exited[0].returncode and not code:
            code = exited[0].returncode
            forward(signal.SIGTERM, None)
    return code


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="ti-pipeline worker", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-y", "--config", help="run-config YAML with the execution.config of the *_on_celery jobs "
                        "(broker, backend, heavy_queue, warehouse_queue)")
    parser.add_argument("--broker", help="broker URL (overrides the YAML's), e.g. redis://host:6379/0, "
                        "pyamqp://guest:guest@host:5672//")
    parser.add_argument("--backend", help="result backend URL (overrides the YAML's)")
    parser.add_argument("-q", "--queue", action="append", required=True,
                        help="heavy, warehouse, or a queue name; repeat to listen on several")
    parser.add_argument("-p", "--processes", type=int, default=1,
                        help="worker processes, each running one step at a time (default 1)")
    parser.add_argument("-n", "--name", help="worker name (default: the queues, a random suffix, @%%h)")
    parser.add_argument("-l", "--loglevel", default="INFO")
    return parser


def run(args: argparse.Namespace) -> int:
    """``ti-pipeline worker``: one worker process, or ``--processes N`` of them under this one."""
    name = args.name or f"{'+'.join(args.queue)}-{uuid.uuid4().hex[:6]}@%h"
    if args.processes > 1:  # the children load and check the config; this process only watches them
        passed = [*(["-y", args.config] if args.config else []), *(["--broker", args.broker] if args.broker else []),
                  *(["--backend", args.backend] if args.backend else []), "-l", args.loglevel]
        for queue in args.queue:
            passed += ["-q", queue]
        return supervise(passed, args.processes, name)
    config = load_config(args.config, args.broker, args.backend)
    return run_worker(config, resolve_queues(args.queue, config), name, args.loglevel)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    raise SystemExit(main())
