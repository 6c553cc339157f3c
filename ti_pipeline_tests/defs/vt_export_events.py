"""What a run of the VT export leaves in a Dagster instance for a day, without running it: the day's
materialization (only when no blocking check failed, as the export does), then its check evaluations aimed
at the day's latest materialization. Each export is a run record of its own, so a day can be exported,
failed and re-exported (an instance keeps one check evaluation per run, check and partition)."""

from __future__ import annotations

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetMaterialization,
    DagsterInstance,
)
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.utils import make_new_run_id

from ti_pipeline.defs.vt_feed.automation import VT_FILE_REPORTS
from ti_pipeline.defs.vt_feed.export import VT_FILE_REPORTS_KEY, latest_materialization

BLOCKING = ("counts_reconcile", "packages_corrupt")
JOB = VT_FILE_REPORTS.name


def new_run(instance: DagsterInstance) -> str:
    return instance.add_run(DagsterRun(job_name=JOB, run_id=make_new_run_id(), status=DagsterRunStatus.SUCCESS)).run_id


def record_checks(instance: DagsterInstance, day: str, run_id: str, failing: tuple[str, ...] = ()) -> None:
    target = latest_materialization(instance, day)
    for name in BLOCKING:
        evaluation = AssetCheckEvaluation(
            asset_key=VT_FILE_REPORTS_KEY, check_name=name, passed=name not in failing,
            severity=AssetCheckSeverity.ERROR, partition=day, target_materialization_data=target, blocking=True,
        )
        event = DagsterEvent(DagsterEventType.ASSET_CHECK_EVALUATION.value, JOB, event_specific_data=evaluation)
        instance.report_dagster_event(event, run_id=run_id)


def record_export(
    instance: DagsterInstance, day: str, failing: tuple[str, ...] = (), checks: bool = True, run_id: str | None = None
) -> str:
    """One export of ``day``; ``checks=False`` stops between the materialization and its check results.
    Returns the run id (pass it to ``record_checks`` to finish such an export)."""
    run_id = run_id or new_run(instance)
    if not failing:
        materialization = StepMaterializationData(AssetMaterialization(asset_key=VT_FILE_REPORTS_KEY, partition=day))
        event = DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, JOB, event_specific_data=materialization)
        instance.report_dagster_event(event, run_id=run_id)
    if checks:
        record_checks(instance, day, run_id, failing)
    return run_id
