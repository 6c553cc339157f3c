"""The loader interface: stage one export day into per-day staging tables, then merge them.

Every loader only fills staging tables; the merge into ``ioc_file_hashes`` is the same SQL for all
of them (``ti_pipeline.vt_feed.load.merge``). The ``sql`` loader joins the Broccoli sidecar to the
report rows in process and stages one table (``schema.vt_classified_staging``); the TiDB tools
(``lightning``, ``import_into``) import the Parquet parts as they are into two tables, the reports
and the sidecar (``schema.vt_load_staging``), which the merge joins by SHA1.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import sqlalchemy as sa

from ti_pipeline.core import settings
from ti_pipeline.core.accounting import QuarantineRecord
from ti_pipeline.core.exports import DayExport
from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.core.retry import Backoff, retry_call
from ti_pipeline.core.warehouse import Warehouse, driver_error, is_transient

STATEMENT_RETRIES = Backoff(attempts=6, base=0.2, cap=30.0)
LOADER_NAMES = ("sql", "lightning", "import_into")

# Called after each committed step ("staged_batch", "merged_chunk") with its index: progress for
# the UI, and the place tests drop a connection or kill the run.
EventHook = Callable[[str, int], None]

log = logging.getLogger(__name__)


class LoaderError(RuntimeError):
    """A load that cannot finish: the message names the day, the object or the tool's error."""


@dataclass
class LoadSettings:
    """What a loader needs besides the warehouse and the export store (no secrets in ``repr``).

    The ``loader`` resource is made from these fields; one left out is its ``TI_*`` setting.
    """

    loader: str = settings.configured("TI_LOADER")
    batch_rows: int = 50_000
    """Rows per staging batch (one LOAD DATA / INSERT transaction)."""
    merge_chunk_rows: int = 100_000
    """Staged rows per merge transaction (keep TiDB transactions small)."""
    load_data: bool = True
    """sql loader on MySQL-family servers: LOAD DATA LOCAL INFILE (False, or refused by the server: batched INSERTs)."""
    # lightning / import_into: the TiDB cluster behind the warehouse URL.
    lightning_bin: str = settings.configured("TI_LIGHTNING_BIN")
    sorted_kv_dir: str = settings.configured("TI_LIGHTNING_SORTED_KV_DIR")
    work_dir: str | None = None
    """Where Lightning's task files go (default: the system temp folder)."""
    tidb_host: str | None = settings.configured("TI_TIDB_HOST")
    tidb_port: int | None = settings.configured("TI_TIDB_PORT")
    tidb_user: str | None = settings.configured("TI_TIDB_USER")
    tidb_password: str | None = settings.configured("TI_TIDB_PASSWORD")
    tidb_status_port: int = settings.configured("TI_TIDB_STATUS_PORT")
    pd_addr: str | None = settings.configured("TI_TIDB_PD_ADDR")
    timeout_seconds: float = 6 * 3600.0
    """Longest a Lightning run or IMPORT INTO job may take before it is killed / cancelled."""
    poll_seconds: float = 10.0
    """``SHOW IMPORT JOB`` interval."""

    def __post_init__(self) -> None:
        if self.loader not in LOADER_NAMES:
            raise ValueError(f"unknown loader {self.loader!r}: use one of {', '.join(LOADER_NAMES)}")


@dataclass
class StageRequest:
    warehouse: Warehouse
    store: ObjectStore
    reports: DayExport
    sidecar: DayExport
    reports_table: sa.Table
    sidecar_table: sa.Table | None
    """None when the stager carries the classification in the report rows (``Stager.classifies``)."""
    settings: LoadSettings
    log: logging.Logger
    quarantine: Callable[[Sequence[QuarantineRecord]], None]
    on_event: EventHook | None = None
    admitted: tuple[str, ...] | None = None
    """The classifications the import policy admits: a stager that writes new rows straight into the
    target (``SqlStager`` with LOAD DATA) needs them; None: stage every row."""

    def event(self, name: str, index: int) -> None:
        if self.on_event is not None:
            self.on_event(name, index)


@dataclass
class StageResult:
    """VT report rows read and rejected while staging (the Broccoli sidecar only gets figures).

    ``unstaged``: rows settled without the staging table (written straight into the target, or
    left out by the import policy), their outcome counts in ``outcomes`` (the merge's names)."""

    read: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    figures: Counter[str] = field(default_factory=Counter)
    unstaged: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


class Stager(Protocol):
    name: str
    # Why manifest rows may be missing from staging (the accounting's rejection reason).
    shortfall_reason: str
    # True: stages the Broccoli classification in each report row (no sidecar table to join).
    classifies: bool

    def stage(self, request: StageRequest) -> StageResult: ...


def retrying(work: Callable[[], None], what: str, figures: Counter[str]) -> None:
    """Run ``work`` again after a dropped connection or lock timeout; each retry counts in ``figures``."""

    def count(_failure: Exception, _delay: float) -> None:
        figures["retries"] += 1

    retry_call(work, STATEMENT_RETRIES, what=what, retry_on=is_transient, on_retry=count, describe=driver_error, logger=log)


def mysql_family(warehouse: Warehouse) -> bool:
    return warehouse.dialect in ("mysql", "mariadb")


def quote_identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain identifier: {name!r}")
    return f"`{name}`"
