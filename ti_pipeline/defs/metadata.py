"""Dagster glue shared by every asset: accounting as metadata, progress logs, reconciliation checks."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

from ti_pipeline.core.accounting import Accounting


def accounting_metadata(acc: Accounting, extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """Every count as its own metadata entry, the balance as a table, and charts of where the
    records went and (when counted) of the classification mix."""
    counts = acc.as_dict()
    rows = "\n".join(f"| {name} | {value:,} |" for name, value in counts.items())
    meta: dict[str, object] = {name: MetadataValue.int(value) for name, value in counts.items()}
    meta["accounting"] = MetadataValue.md(f"| count | records |\n|---|---:|\n{rows}")
    outcome = {"written": acc.written}
    outcome.update({f"filtered: {k}": v for k, v in acc.filtered.most_common()})
    outcome.update({f"rejected: {k}": v for k, v in acc.rejected.most_common()})
    meta["where_records_went"] = MetadataValue.md(bar_chart(outcome, "outcome"))
    mix = {k.split(".", 1)[1]: v for k, v in acc.figures.most_common() if k.startswith("classification.")}
    if mix:
        meta["classification_mix"] = MetadataValue.md(bar_chart(mix, "classification"))
    meta["dagster/row_count"] = MetadataValue.int(acc.written)
    meta.update(extra or {})
    return meta


def bar_chart(values: Mapping[str, int], label: str, width: int = 40) -> str:
    """A horizontal bar chart as a markdown table (the UI renders it; no image service needed)."""
    top = max(values.values(), default=0) or 1
    lines = [f"| {label} | count | |", "|---|---:|---|"]
    for name, value in values.items():
        bar = "█" * max(1 if value else 0, round(width * value / top))
        lines.append(f"| {name} | {value:,} | {f'`{bar}`' if bar else ''} |")
    return "\n".join(lines)


def sample_table(rows: Iterable[Mapping[str, object]]) -> str:
    """A few rows as a markdown table; bytes as hex, long values cut."""
    rows = list(rows)
    if not rows:
        return "(no rows)"
    columns = list(rows[0])

    def cell(value: object) -> str:
        text = value.hex() if isinstance(value, bytes) else "" if value is None else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 80 else text[:77] + "..."

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


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
