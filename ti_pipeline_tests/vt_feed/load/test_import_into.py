"""The import_into loader: its TiDB-only statements exactly, and the polling of the job."""

from __future__ import annotations

import logging

import pytest

from ti_pipeline.core.exports import part_name
from ti_pipeline.vt_feed.load import LoaderError, LoadSettings, load_day
from ti_pipeline.vt_feed.load.import_into import (
    cancel_import_job_statement,
    import_into_statement,
    run_import_job,
    show_import_job_statement,
)
from ti_pipeline_tests.vt_feed.load.exportdata import report, write_day

LOG = logging.getLogger("test.import_into")
STATEMENT = import_into_statement("threat_intel", "stage_vt_file_reports_20240101", "gs://ti-export/vt_file_reports/date=2024-01-01/")


def test_statements_are_exactly_what_tidb_expects():
    assert STATEMENT == (
        "IMPORT INTO `threat_intel`.`stage_vt_file_reports_20240101` "
        "FROM 'gs://ti-export/vt_file_reports/date=2024-01-01/*.parquet' FORMAT 'parquet' WITH DETACHED"
    )
    assert show_import_job_statement(7) == "SHOW IMPORT JOB 7"
    assert cancel_import_job_statement(7) == "CANCEL IMPORT JOB 7"
    assert import_into_statement("db", "t", "/x/it's") == "IMPORT INTO `db`.`t` FROM '/x/it''s/*.parquet' FORMAT 'parquet' WITH DETACHED"
    with pytest.raises(ValueError):
        import_into_statement("db", "t`; DROP TABLE x; --", "/x")


class ScriptedTidb:
    """Answers the statements a TiDB would, from a script of job states (TiDB cannot run here)."""

    def __init__(self, states: list[dict]):
        self.states = states
        self.statements: list[str] = []

    def __call__(self, statement: str) -> list[dict]:
        self.statements.append(statement)
        if statement.startswith("IMPORT INTO"):
            return [{"Job_ID": 7, "Status": "pending"}]
        if statement.startswith("SHOW IMPORT JOB"):
            return [self.states.pop(0) if len(self.states) > 1 else self.states[0]]
        return []


def test_the_job_is_polled_until_it_finishes():
    tidb = ScriptedTidb([
        {"Job_ID": 7, "Status": "running", "Phase": "importing", "Imported_Rows": 0},
        {"Job_ID": 7, "Status": "running", "Phase": "validating", "Imported_Rows": 10},
        {"Job_ID": 7, "Status": "finished", "Phase": "", "Imported_Rows": 10},
    ])
    sleeps = []
    job = run_import_job(tidb, STATEMENT, log=LOG, poll_seconds=5, timeout=600, sleep=sleeps.append)
    assert job["Imported_Rows"] == 10
    assert tidb.statements == [STATEMENT] + ["SHOW IMPORT JOB 7"] * 3
    assert sleeps == [5, 5]


def test_a_failed_job_fails_with_tidbs_message():
    tidb = ScriptedTidb([{"Job_ID": 7, "Status": "failed", "Result_Message": "[Lightning:Restore:ErrChecksumMismatch]checksum mismatched"}])
    with pytest.raises(LoaderError, match=r"import job 7 failed: \[Lightning:Restore:ErrChecksumMismatch\]checksum mismatched"):
        run_import_job(tidb, STATEMENT, log=LOG, poll_seconds=5, timeout=600, sleep=lambda s: None)


def test_a_job_running_past_the_timeout_is_cancelled():
    tidb = ScriptedTidb([{"Job_ID": 7, "Status": "running", "Phase": "importing"}])
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(LoaderError, match="import job 7 still running after 30s; cancelled"):
        run_import_job(tidb, STATEMENT, log=LOG, poll_seconds=10, timeout=30, sleep=sleep, clock=lambda: now[0])
    assert tidb.statements[-1] == "CANCEL IMPORT JOB 7"


def test_a_run_stopped_while_polling_cancels_the_job():
    tidb = ScriptedTidb([{"Job_ID": 7, "Status": "running", "Phase": "importing"}])

    def stopped(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_import_job(tidb, STATEMENT, log=LOG, poll_seconds=10, timeout=600, sleep=stopped)
    assert tidb.statements == [STATEMENT, "SHOW IMPORT JOB 7", "CANCEL IMPORT JOB 7"]


@pytest.mark.parametrize("warehouse_url", ["mysql"], indirect=True)
def test_parquet_the_manifest_does_not_list_stops_the_import(store, warehouse):
    write_day(store, "2024-01-01", [report(0, "2024-01-01 10:00:00")], [])
    store.write_bytes(part_name("vt_file_reports", "2024-01-01", 5), b"left by an aborted export")
    with pytest.raises(LoaderError, match=r"holds Parquet its manifest does not list \(vt_file_reports/date=2024-01-01/part-00005.parquet\)"):
        load_day(warehouse, store, "2024-01-01", LoadSettings(loader="import_into"), log=LOG, quarantine=lambda r: None)
