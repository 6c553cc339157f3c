"""The loader interface: stage one export day into per-day staging tables, then merge them.

Every loader (``sql``, ``lightning``, ``import_into``) only fills the two staging tables (the VT
reports and the Broccoli sidecar of the day, ``schema.vt_load_staging``); the merge into
``ioc_file_hashes`` is the same SQL for all of them (``ti_pipeline.vt_feed.load.merge``).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import sqlalchemy as sa

from ti_pipeline.core.accounting import QuarantineRecord
from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.core.warehouse import Warehouse, is_transient
from ti_pipeline.vt_feed.load.exports_reader import DayExport

RETRIES = 5
LOADER_NAMES = ("sql", "lightning", "import_into")

# Called after each committed step ("staged_batch", "merged_chunk") with its index: progress for
# the UI, and the place tests drop a connection or kill the run.
EventHook = Callable[[str, int], None]


class LoaderError(RuntimeError):
    """A load that cannot finish: the message names the day, the object or the tool's error."""


@dataclass
class LoadSettings:
    """What a loader needs besides the warehouse and the export store (no secrets in ``repr``)."""

    loader: str = "sql"
    batch_rows: int = 50_000
    merge_chunk_rows: int = 100_000
    # sql: LOAD DATA LOCAL INFILE on MySQL-family servers (batched inserts when the server refuses it).
    load_data: bool = True
    # lightning / import_into: the TiDB cluster behind the warehouse URL.
    lightning_bin: str = "tidb-lightning"
    sorted_kv_dir: str = "/tmp/ti-lightning-sorted-kv"
    work_dir: str | None = None
    tidb_host: str | None = None
    tidb_port: int | None = None
    tidb_user: str | None = None
    tidb_password: str | None = field(default=None, repr=False)
    tidb_status_port: int = 10080
    pd_addr: str | None = None
    timeout_seconds: float = 6 * 3600.0
    poll_seconds: float = 10.0

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
    sidecar_table: sa.Table
    settings: LoadSettings
    log: logging.Logger
    quarantine: Callable[[Sequence[QuarantineRecord]], None]
    on_event: EventHook | None = None

    def event(self, name: str, index: int) -> None:
        if self.on_event is not None:
            self.on_event(name, index)


@dataclass
class StageResult:
    """VT report rows read and rejected while staging (the Broccoli sidecar only gets figures)."""

    read: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    figures: Counter[str] = field(default_factory=Counter)


class Stager(Protocol):
    name: str
    # Why manifest rows may be missing from staging (the accounting's rejection reason).
    shortfall_reason: str

    def stage(self, request: StageRequest) -> StageResult: ...


def retrying(work: Callable[[], None], what: str, log: logging.Logger, figures: Counter[str]) -> None:
    """Run ``work`` again after a dropped connection or lock timeout, with backoff and jitter."""
    for attempt in range(RETRIES + 1):
        try:
            work()
            return
        except sa.exc.OperationalError as exc:
            if attempt == RETRIES or not is_transient(exc):
                raise
            delay = min(30.0, 0.2 * 2**attempt) * (0.5 + random.random())
            figures["retries"] += 1
            log.warning(f"{what} failed ({exc.orig}); retry {attempt + 1} in {delay:.1f}s")
            time.sleep(delay)


def mysql_family(warehouse: Warehouse) -> bool:
    return warehouse.dialect in ("mysql", "mariadb")


def quote_identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain identifier: {name!r}")
    return f"`{name}`"
