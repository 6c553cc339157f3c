"""Dagster glue shared by every asset: accounting as metadata, progress logs, reconciliation checks."""

from __future__ import annotations

import time
from collections.abc import Mapping

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

from ti_pipeline.accounting import Accounting


def accounting_metadata(acc: Accounting, extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """Every count as its own metadata entry, plus the whole balance as a table for the UI."""
    counts = acc.as_dict()
    rows = "\n".join(f"| {name} | {value:,} |" for name, value in counts.items())
    meta: dict[str, object] = {name: MetadataValue.int(value) for name, value in counts.items()}
    meta["accounting"] = MetadataValue.md(f"| count | records |\n|---|---:|\n{rows}")
    meta["dagster/row_count"] = MetadataValue.int(acc.written)
    meta.update(extra or {})
    return meta


def reconcile_check(acc: Accounting, check_name: str = "counts_reconcile", asset_key=None) -> AssetCheckResult:
    """read = written + filtered + rejected, or the check fails with the difference."""
    return AssetCheckResult(
        check_name=check_name,
        asset_key=asset_key,
        passed=acc.unaccounted == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"read": acc.read, "accounted": acc.read - acc.unaccounted, "unaccounted": acc.unaccounted},
    )


class Progress:
    """Logs counts and rates at most every ``interval`` seconds while a long step runs."""

    def __init__(self, log, what: str, interval: float = 10.0):
        self.log, self.what, self.interval = log, what, interval
        self.started = self.last = time.monotonic()

    def update(self, records: int, nbytes: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        self.log.info(
            f"{self.what}: {records:,} records, {nbytes / 1e6:,.1f} MB "
            f"({records / elapsed:,.0f} records/s, {nbytes / 1e6 / elapsed:,.1f} MB/s)"
        )
