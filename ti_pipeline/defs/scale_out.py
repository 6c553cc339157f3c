"""Scale-out: the heavy jobs' steps on Celery workers, or each in a Kubernetes pod of its own.

Variants of the domains' jobs (same ``JobSpec``, so the same selection), one per
executor:

- ``*_on_celery`` (``ti_celery_executor``): the run process submits each step to a queue and a worker
  started by ``ti-pipeline worker`` (ti_pipeline/defs/worker.py) executes it. Steps of heavy jobs (tag
  ``ti_pipeline/heavy``: the VT export, the dump shards) go to the ``heavy_queue`` (decompression and
  decoding, each step running its own pool of ``workers`` processes), every other step to the
  ``warehouse_queue``, so a deployment gives them different worker counts; an op tag
  ``dagster-celery/queue`` still wins. Workers run one step per worker process in a non-daemonic thread
  (``--pool threads --concurrency 1``): a step's spawn pool needs a non-daemonic parent, which Celery's
  prefork children are not, and the worker's main thread stays free to answer the run process.
  A worker that dies mid-step (SIGKILL, OOM, lost host) leaves no result behind: the run process asks
  the worker that started the step whether it still runs it and fails the step, naming the worker,
  once it has not answered for ``worker_lost_after_seconds``.
- ``*_on_k8s`` (dagster-k8s ``k8s_job_executor``): every step in a pod of its own; the heavy steps
  request as many CPUs as their ``workers`` and the memory measured for that many workers.

docs/deployment.md says how each piece starts.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dagster import (
    DagsterEvent,
    DagsterInvalidConfigError,
    Field,
    InitExecutorContext,
    IntSource,
    Permissive,
    StringSource,
    executor,
    multiple_process_executor_requirements,
)
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository
from dagster._core.events import EngineEventData
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.retries import RetryMode
from dagster._grpc.types import ExecuteStepArgs
from dagster._serdes import pack_value
from dagster._utils.error import SerializableErrorInfo, serializable_error_info_from_exc_info
from dagster_celery.core_execution_loop import DELEGATE_MARKER, _get_step_priority
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG
from dagster_shared.serdes import deserialize_value

from ti_pipeline.defs.jobs import HEAVY_TAG, JobSpec
from ti_pipeline.defs.sage_dump import (
    IOC_DOMAINS_KEY,
    IOC_FILE_HASHES_KEY,
    SAGE_DUMP_SHARDS,
    SAGE_DUMP_SMALL_COLLECTIONS,
)
from ti_pipeline.defs.vt_feed.automation import VT_FILE_REPORTS, VT_LOAD
from ti_pipeline.defs.vt_feed.export import VT_FILE_REPORTS_KEY

# The jobs a deployment spreads over workers.
SCALE_OUT = (VT_FILE_REPORTS, VT_LOAD, SAGE_DUMP_SHARDS, SAGE_DUMP_SMALL_COLLECTIONS)

CODE_LOCATION_MODULE = "ti_pipeline.definitions"
HEAVY_QUEUE = "ti-heavy"
WAREHOUSE_QUEUE = "ti-warehouse"
QUEUE_KINDS = ("heavy", "warehouse")  # `ti-pipeline worker --queue heavy` = the config's heavy_queue
TICK_SECONDS = 0.25
INSPECT_TIMEOUT_SECONDS = 2.0

# ---------------------------------------------------------------------------------------- Celery

CELERY_EXECUTOR_CONFIG = {
    **CELERY_CONFIG,
    "heavy_queue": Field(
        StringSource, is_required=False, default_value=HEAVY_QUEUE,
        description="Queue of the steps of runs tagged ti_pipeline/heavy (decompression, decoding).",
    ),
    "warehouse_queue": Field(
        StringSource, is_required=False, default_value=WAREHOUSE_QUEUE,
        description="Queue of every other step (warehouse writes, lookups).",
    ),
    "worker_lost_after_seconds": Field(
        IntSource, is_required=False, default_value=60,
        description="A started step whose worker has not answered for this long is failed as lost.",
    ),
}
# The keys only ti_pipeline reads; the rest is dagster-celery's own executor config.
OWN_EXECUTOR_KEYS = ("heavy_queue", "warehouse_queue", "worker_lost_after_seconds")


def step_queue(step_tags: Mapping[str, str], run_tags: Mapping[str, str], heavy_queue: str, warehouse_queue: str) -> str:
    """An op's ``dagster-celery/queue`` tag, else the run's, else the heavy or the warehouse queue."""
    if DAGSTER_CELERY_QUEUE_TAG in step_tags:
        return step_tags[DAGSTER_CELERY_QUEUE_TAG]
    if DAGSTER_CELERY_QUEUE_TAG in run_tags:
        return run_tags[DAGSTER_CELERY_QUEUE_TAG]
    return heavy_queue if HEAVY_TAG in step_tags or HEAVY_TAG in run_tags else warehouse_queue


class _Watch:
    """Whether the worker that started a step still runs it (asked through the broker)."""

    def __init__(self, result, lost_after: float):
        self.result = result
        self.lost_after = lost_after
        self.interval = max(1.0, min(10.0, lost_after / 4))
        self.last_seen = time.monotonic()
        self.next_check = self.last_seen + self.interval
        self.worker: str | None = None
        self.pid: int | None = None

    def lost(self, app) -> bool:
        now = time.monotonic()
        if now < self.next_check:
            return False
        self.next_check = now + self.interval
        if self.result.state != "STARTED":  # queued, or reserved by a worker: nothing runs it yet
            self.last_seen = now
            return False
        info = self.result.info
        info = info if isinstance(info, dict) else {}  # {"hostname": ..., "pid": ...} (task_track_started)
        self.worker, self.pid = info.get("hostname") or self.worker, info.get("pid") or self.pid
        if not self.worker:
            self.last_seen = now
            return False
        try:
            replies = app.control.inspect(destination=[self.worker], timeout=INSPECT_TIMEOUT_SECONDS).query_task(
                self.result.id
            ) or {}
        except Exception:  # the broker itself unreachable: not evidence against the worker
            return False
        if self.result.id in (replies.get(self.worker) or {}):
            self.last_seen = time.monotonic()
            return False
        return not self.result.ready() and time.monotonic() - self.last_seen >= self.lost_after

    def reason(self, step_key: str, queue: str) -> str:
        silent = round(time.monotonic() - self.last_seen)
        return (
            f"Celery worker {self.worker} (pid {self.pid}) was lost while it ran step {step_key} "
            f"(task {self.result.id}, queue {queue}): it has not answered for {silent} s "
            f"(worker_lost_after_seconds). The worker process was killed, ran out of memory or lost its "
            f"host. Re-execute the run: the step rewrites its partitions whole."
        )


def _submit(task, plan_context, step, queue: str, priority: int, known_state):
    """dagster-celery's ``_submit_task``, with the task made once per run rather than per step."""
    args = ExecuteStepArgs(
        job_origin=plan_context.reconstructable_job.get_python_origin(),
        run_id=plan_context.dagster_run.run_id,
        step_keys_to_execute=[step.key],
        instance_ref=plan_context.instance.get_ref(),
        retry_mode=plan_context.executor.retries.for_inner_plan(),
        known_state=known_state,
        print_serialized_events=True,
    )
    signature = task.si(execute_step_args_packed=pack_value(args),
                        executable_dict=plan_context.reconstructable_job.to_dict())
    return signature.apply_async(priority=priority, queue=queue, routing_key=f"{queue}.execute_plan")


def _failure(job_context, active_execution, step, error: SerializableErrorInfo):
    """The step's failure (or retry, under an op retry policy), logged and handed to the plan."""
    event = job_context.executor.log_failure_or_retry_event_after_error(
        job_context.for_step(step), error, active_execution.get_known_state()
    )
    active_execution.handle_event(event)
    return event


def ti_celery_execution_loop(job_context, execution_plan, executor: TiCeleryExecutor):
    """dagster-celery's execution loop, with ti_pipeline's queue routing, lost workers failing their
    step (instead of the run waiting forever), task errors as step failures, and a 0.25 s tick."""
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    if execution_plan.step_keys_to_execute:
        assert execution_plan.artifacts_persisted, "Celery needs a persistent IO manager"
    app = make_app(executor.app_args())
    task = create_task(app)
    run_tags = job_context.dagster_run.tags
    default_priority = app.conf.task_default_priority
    in_flight: dict[str, tuple[Any, _Watch, str]] = {}  # step key -> (AsyncResult, watch, queue)

    with InstanceConcurrencyContext(job_context.instance, job_context.dagster_run) as concurrency:
        with execution_plan.start(
            retry_mode=executor.retries,
            sort_key_fn=lambda step: -_get_step_priority(job_context, step, default_priority),
            instance_concurrency_context=concurrency,
        ) as active:
            stopping = False
            while (not active.is_complete and not stopping) or in_flight:
                if active.check_for_interrupts():
                    yield DagsterEvent.engine_event(
                        job_context, "Celery executor: received termination signal - revoking active tasks",
                        EngineEventData.interrupted(list(in_flight)),
                    )
                    stopping = True
                    active.mark_interrupted()
                    for result, _, _ in in_flight.values():
                        result.revoke()
                for step_key, (result, watch, queue) in list(in_flight.items()):
                    step = active.get_step_by_key(step_key)
                    if stopping and result.state == "PENDING":  # revoked before any worker started it
                        del in_flight[step_key]
                        yield DagsterEvent.engine_event(
                            job_context.for_step(step), f'celery task for step "{step_key}" was revoked.',
                            EngineEventData(marker_end=DELEGATE_MARKER),
                        )
                        active.verify_complete(job_context, step_key)
                    elif result.ready():
                        del in_flight[step_key]
                        try:
                            events = result.get()
                        except Exception:
                            error = serializable_error_info_from_exc_info(sys.exc_info())
                            yield _failure(job_context, active, step, error)
                            events = []
                        for serialized in events:
                            event = deserialize_value(serialized, DagsterEvent)
                            yield event
                            active.handle_event(event)
                        active.verify_complete(job_context, step_key)
                    elif watch.lost(app):
                        del in_flight[step_key]
                        result.revoke()  # should the worker come back, it must not start the step again
                        reason = watch.reason(step_key, queue)
                        yield DagsterEvent.engine_event(
                            job_context.for_step(step), reason, EngineEventData(marker_end=DELEGATE_MARKER)
                        )
                        lost = SerializableErrorInfo(message=reason, stack=[], cls_name="CeleryWorkerLost")
                        yield _failure(job_context, active, step, lost)
                        active.verify_complete(job_context, step_key)

                yield from active.plan_events_iterator(job_context)
                # (dagster-celery's loop skips its sleep once stopping, and spins while tasks are in flight.)
                for step in [] if stopping else active.get_steps_to_execute():
                    queue = step_queue(step.tags, run_tags, executor.heavy_queue, executor.warehouse_queue)
                    yield DagsterEvent.engine_event(
                        job_context.for_step(step),
                        f'Submitting celery task for step "{step.key}" to queue "{queue}".',
                        EngineEventData(marker_start=DELEGATE_MARKER),
                    )
                    priority = _get_step_priority(job_context, step, default_priority)
                    result = _submit(task, job_context, step, queue, priority, active.get_known_state())
                    in_flight[step.key] = (result, _Watch(result, executor.worker_lost_after_seconds), queue)
                time.sleep(TICK_SECONDS)


class TiCeleryExecutor(CeleryExecutor):
    def __init__(self, *, heavy_queue: str, warehouse_queue: str, worker_lost_after_seconds: float, **kwargs):
        super().__init__(**kwargs)
        self.heavy_queue = heavy_queue
        self.warehouse_queue = warehouse_queue
        self.worker_lost_after_seconds = worker_lost_after_seconds

    def execute(self, plan_context, execution_plan):
        return ti_celery_execution_loop(plan_context, execution_plan, self)


@executor(name="ti_celery", config_schema=CELERY_EXECUTOR_CONFIG, requirements=multiple_process_executor_requirements())
def ti_celery_executor(init_context):
    """dagster-celery's executor (same config: broker, backend, config_source, ...) plus the heavy and
    warehouse queues and lost-worker detection; workers: ``ti-pipeline worker``."""
    config = init_context.executor_config
    return TiCeleryExecutor(
        broker=config.get("broker"),
        backend=config.get("backend"),
        config_source=config.get("config_source"),
        include=config.get("include"),
        retries=RetryMode.from_config(config["retries"]),
        heavy_queue=config["heavy_queue"],
        warehouse_queue=config["warehouse_queue"],
        worker_lost_after_seconds=config["worker_lost_after_seconds"],
    )


def celery_variant(spec: JobSpec):
    queue = "heavy_queue" if spec.heavy else "warehouse_queue"
    return spec.build(
        "on_celery", executor_def=ti_celery_executor,
        description=f"{spec.description} Each step on a Celery worker of the {queue} (`ti-pipeline worker`).",
    )


celery_jobs = [celery_variant(spec) for spec in SCALE_OUT]

# ------------------------------------------------------------------------------------ Kubernetes


@dataclass(frozen=True)
class StepSize:
    """A heavy step's peak RSS, measured on the sample data with ``deploy/measure_scaleout.py rss``
    (the step process with the code location loaded, and each pool process); flat in the input size,
    since a step holds a bounded number of blocks or packages in flight (docs/performance.md)."""

    step_mib: int
    worker_mib: int

    def peak_mib(self, workers: int) -> int:
        return self.step_mib + workers * self.worker_mib

    def resources(self, workers: int) -> dict[str, dict[str, str]]:
        """CPU = the step's processes; memory = 1.5 x the measured peak, limit twice that. No CPU limit:
        a throttled decompressor only runs longer, and the request already reserves the cores."""
        request = -(-self.peak_mib(workers) * 3 // 2 // 256) * 256
        return {"requests": {"cpu": str(workers), "memory": f"{request}Mi"}, "limits": {"memory": f"{2 * request}Mi"}}


# The heavy steps by op name (an asset's op is named for its key: ``vt_feed__vt_file_reports``).
VT_EXPORT_OP = VT_FILE_REPORTS_KEY.to_python_identifier()
DUMP_FILE_REP_OP = IOC_FILE_HASHES_KEY.to_python_identifier()
DUMP_DOMAINS_OP = IOC_DOMAINS_KEY.to_python_identifier()
# Measured 2026-12-02 with workers: 2 (deploy/measure_scaleout.py rss): vt_file_reports 344 MiB step
# process + 211 MiB per pool process (789 MiB in all); a dump shard step 334 + 107 (561 MiB).
STEP_SIZES = {
    VT_EXPORT_OP: StepSize(step_mib=360, worker_mib=215),
    DUMP_FILE_REP_OP: StepSize(step_mib=345, worker_mib=110),
    DUMP_DOMAINS_OP: StepSize(step_mib=345, worker_mib=110),
}
# The job each heavy step (op) belongs to, for the default ``workers`` of the Kubernetes variants.
HEAVY_STEP_JOBS = {
    VT_EXPORT_OP: VT_FILE_REPORTS,
    DUMP_FILE_REP_OP: SAGE_DUMP_SHARDS,
    DUMP_DOMAINS_OP: SAGE_DUMP_SHARDS,
}
# The heavy steps' ``workers`` in the Kubernetes variants unless the run config says otherwise: the
# pod requests that many CPUs (the run pods of deploy/dagster.production.yaml request 4 too).
K8S_STEP_WORKERS = 4


def step_container_context(context, op_name: str, op_config: Mapping[str, Any] | None):
    """``context`` with the resources of a heavy step sized from its ``workers`` (run config), so the
    request follows the config; explicit ``per_step_k8s_config`` for the op is applied by the caller."""
    from dagster import Failure
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    size = STEP_SIZES.get(op_name)
    if size is None:
        return context
    workers = int((op_config or {}).get("workers") or 0)
    if workers < 1:
        raise Failure(
            f"{op_name}: set `workers` (> 0) in the op config of a Kubernetes run; 0 means one process per "
            f"core of the node, not of the pod, whose CPU request is `workers`"
        )
    sized = UserDefinedDagsterK8sConfig.from_dict({"container_config": {"resources": size.resources(workers)}})
    return context.merge(K8sContainerContext(run_k8s_config=sized))


def _sized_step_handler_class():
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.executor import K8sStepHandler
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    class SizedK8sStepHandler(K8sStepHandler):
        """dagster-k8s's step handler; a heavy step's pod requests what its ``workers`` need."""

        def _get_container_context(self, step_handler_context):
            context = super()._get_container_context(step_handler_context)
            step_context = step_handler_context.get_step_context(self._get_step_key(step_handler_context))
            op_name = step_context.step.op_name
            context = step_container_context(context, op_name, step_context.op_config)
            explicit = self._per_step_k8s_config.get(op_name)  # the deployment's own word wins
            return context.merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(explicit))) \
                if explicit else context

    return SizedK8sStepHandler


@executor(name="ti_k8s", config_schema=Permissive(), requirements=multiple_process_executor_requirements())
def ti_k8s_job_executor(init_context: InitExecutorContext):
    """dagster-k8s's ``k8s_job_executor`` (same config): each step in a Kubernetes Job; the heavy
    steps request ``workers`` CPUs and the memory measured for that many processes.

    dagster-k8s imports the whole Kubernetes client (~3 s of CPU), which every process that loads the
    code location would pay, so it is imported only by a run of a ``*_on_k8s`` job: the config is
    checked against dagster-k8s's own schema when the run starts instead of in the launchpad.
    """
    from dagster._config import process_config
    from dagster_k8s.executor import _K8S_EXECUTOR_CONFIG_SCHEMA, k8s_job_executor

    checked = process_config(_K8S_EXECUTOR_CONFIG_SCHEMA, init_context.executor_config)
    if not checked.success:
        raise DagsterInvalidConfigError("Invalid ti_k8s executor config", checked.errors, init_context.executor_config)
    step_executor = k8s_job_executor.executor_creation_fn(init_context._replace(executor_config=checked.value))
    # Same handler, same state; only the container context of a step gains its sized resources.
    step_executor._step_handler.__class__ = _sized_step_handler_class()
    return step_executor


def k8s_variant(spec: JobSpec):
    heavy_ops = {op: {"config": {"workers": K8S_STEP_WORKERS}} for op, owner in HEAVY_STEP_JOBS.items() if owner is spec}
    return spec.build(
        "on_k8s", executor_def=ti_k8s_job_executor, config={"ops": heavy_ops} if heavy_ops else None,
        description=f"{spec.description} Each step in a Kubernetes Job of its own"
        + (f"; heavy steps request `workers` CPUs (default {K8S_STEP_WORKERS})." if heavy_ops else "."),
    )


k8s_jobs = [k8s_variant(spec) for spec in (VT_FILE_REPORTS, VT_LOAD, SAGE_DUMP_SHARDS)]

jobs = [*celery_jobs, *k8s_jobs]


def reconstructable_job(name: str) -> ReconstructableJob:
    """A job of the code location as a worker rebuilds it: from the module that defines ``defs``
    (what ``dagster job launch -m ti_pipeline.definitions`` records), not from this module."""
    return ReconstructableRepository.for_module(CODE_LOCATION_MODULE, "defs").get_reconstructable_job(name)
