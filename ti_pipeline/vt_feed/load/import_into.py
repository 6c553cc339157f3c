"""The ``import_into`` loader: TiDB's ``IMPORT INTO ... FORMAT 'parquet'`` into the (empty) staging
table, run detached and polled with ``SHOW IMPORT JOB`` until it finishes.

The statements are pure functions (tests compare them exactly); ``run_import_job`` takes any
``execute(sql) -> rows`` so its polling is tested without a TiDB cluster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from ti_pipeline.core.exports import DayExport, unlisted_parquet
from ti_pipeline.vt_feed.load.base import LoaderError, StageRequest, StageResult, quote_identifier
from ti_pipeline.vt_feed.load.tidb import source_location, tidb_target

Execute = Callable[[str], Sequence[Mapping[str, object]]]
DONE = {"finished"}
FAILED = {"failed", "cancelled"}


def sql_string(value: str) -> str:
    """A single-quoted SQL literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def import_into_statement(database: str, table: str, source_dir: str) -> str:
    return (
        f"IMPORT INTO {quote_identifier(database)}.{quote_identifier(table)} "
        f"FROM {sql_string(source_dir.rstrip('/') + '/*.parquet')} FORMAT 'parquet' WITH DETACHED"
    )


def show_import_job_statement(job_id: int) -> str:
    return f"SHOW IMPORT JOB {int(job_id)}"


def cancel_import_job_statement(job_id: int) -> str:
    return f"CANCEL IMPORT JOB {int(job_id)}"


def run_import_job(
    execute: Execute,
    statement: str,
    *,
    log: logging.Logger,
    poll_seconds: float,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Mapping[str, object]:
    """Submit a detached import, poll its job until it is finished; fail with TiDB's message."""
    rows = execute(statement)
    if not rows or "Job_ID" not in rows[0]:
        raise LoaderError(f"IMPORT INTO returned no job: {rows!r}")
    job_id = int(rows[0]["Job_ID"])
    log.info(f"IMPORT INTO job {job_id} submitted")
    deadline = clock() + timeout
    try:
        return _poll(execute, job_id, log=log, poll_seconds=poll_seconds, timeout=timeout, deadline=deadline, sleep=sleep, clock=clock)
    except LoaderError:
        raise
    except BaseException:
        # The run is being stopped: do not leave the job importing into a table the re-run re-creates.
        execute(cancel_import_job_statement(job_id))
        raise


def _poll(execute: Execute, job_id: int, *, log, poll_seconds, timeout, deadline, sleep, clock) -> Mapping[str, object]:
    last_phase = None
    while True:
        jobs = execute(show_import_job_statement(job_id))
        if not jobs:
            raise LoaderError(f"SHOW IMPORT JOB {job_id} returned nothing")
        job = jobs[0]
        status = str(job.get("Status", "")).lower()
        phase = (status, job.get("Phase"), job.get("Imported_Rows"))
        if phase != last_phase:
            log.info(f"import job {job_id}: status {status}, phase {job.get('Phase')}, rows {job.get('Imported_Rows')}")
            last_phase = phase
        if status in DONE:
            return job
        if status in FAILED:
            raise LoaderError(f"import job {job_id} {status}: {job.get('Result_Message')}")
        if clock() >= deadline:
            execute(cancel_import_job_statement(job_id))
            raise LoaderError(f"import job {job_id} still {status} after {timeout:g}s; cancelled")
        sleep(poll_seconds)

class ImportIntoStager:
    name = "import_into"
    shortfall_reason = "not_imported_by_import_into"
    classifies = False

    def stage(self, request: StageRequest) -> StageResult:
        settings = request.settings
        result = StageResult(read=request.reports.rows)
        target = tidb_target(request.warehouse.engine.url, settings)
        with request.warehouse.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:

            def execute(statement: str) -> list[Mapping[str, object]]:
                cursor = conn.exec_driver_sql(statement)
                return [dict(row._mapping) for row in cursor] if cursor.returns_rows else []

            for index, (label, export, table) in enumerate(
                (("reports", request.reports, request.reports_table), ("sidecar", request.sidecar, request.sidecar_table))
            ):
                if not export.parts:
                    continue
                self._only_listed_parts(request, export)
                job = run_import_job(
                    execute,
                    import_into_statement(target.database, table.name, source_location(request.store.url_of(export.prefix))),
                    log=request.log,
                    poll_seconds=settings.poll_seconds,
                    timeout=settings.timeout_seconds,
                )
                result.figures[f"imported_rows.{label}"] += int(job.get("Imported_Rows") or 0)
                request.event("staged_batch", index)
        return result

    @staticmethod
    def _only_listed_parts(request: StageRequest, export: DayExport) -> None:
        """IMPORT INTO reads a wildcard, so the folder must hold exactly the manifest's parts."""
        stray = unlisted_parquet(request.store, export)
        if stray:
            raise LoaderError(
                f"{request.store.url_of(export.prefix)} holds Parquet its manifest does not list "
                f"({', '.join(stray[:5])}); IMPORT INTO would read it: delete it or use the sql/lightning loader"
            )

