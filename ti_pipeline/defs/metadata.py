"""Dagster glue shared by every asset: the catalog (column schemas, kinds, owners, code references),
accounting as metadata, progress logs, reconciliation checks."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa
from dagster import (
    AnchorBasedFilePathMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    BetaWarning,
    Definitions,
    MetadataValue,
    TableColumn,
    TableColumnConstraints,
    TableConstraints,
    TableRecord,
    TableSchema,
    link_code_references_to_git,
    with_source_code_references,
)
from sqlalchemy.dialects import mysql

from ti_pipeline.core import settings
from ti_pipeline.core.accounting import Accounting
from ti_pipeline.core.schema import MERGE_RULES

# Who answers for every asset of this code location (the catalog's owner field).
OWNERS = ["team:threat-intel"]
# Storage kinds: the warehouse tables live in TiDB; the exports are Parquet in the export store (GCS
# in production).
TABLE_KINDS = {"python", "tidb"}
EXPORT_KINDS = {"python", "parquet", "gcs"}


def _warehouse_type(column: sa.Column) -> str:
    """The column's type as the TiDB/MySQL DDL spells it (``BINARY(32)``, ``ENUM(...)``, ``MEDIUMTEXT``)."""
    return column.type.compile(dialect=mysql.dialect())


def _table_columns(table: sa.Table) -> tuple[list[TableColumn], list[str]]:
    key = [c.name for c in table.primary_key.columns]
    indexed = {c.name: index.name for index in table.indexes for c in index.columns}
    columns = []
    for c in table.columns:
        other = []
        if c.primary_key:
            other.append("primary key" if len(key) == 1 else f"part of the primary key ({', '.join(key)})")
        if c.name in indexed:
            other.append(f"indexed ({indexed[c.name]})")
        if c.server_default is not None:
            other.append(f"default {c.server_default.arg}")
        constraints = TableColumnConstraints(nullable=bool(c.nullable), unique=c.primary_key and len(key) == 1, other=other)
        columns.append(TableColumn(c.name, _warehouse_type(c), description=c.comment, constraints=constraints))
    rule = MERGE_RULES.get(table.name)
    merge = []
    if rule and rule.newer_column:
        merge.append(f"an incoming row replaces the stored one only when its {rule.newer_column} is not older")
    if rule and rule.protected_source:
        merge.append(f"a stored {rule.protected_source} row is never replaced by another source")
    return columns, merge


def _arrow_columns(arrow_schema: pa.Schema) -> list[TableColumn]:
    columns = []
    for f in arrow_schema:
        described = (f.metadata or {}).get(b"description")
        columns.append(
            TableColumn(
                f.name, str(f.type), description=described.decode() if described else None,
                constraints=TableColumnConstraints(nullable=f.nullable),
            )
        )
    return columns


def column_schema(source: sa.Table | pa.Schema) -> TableSchema:
    """The one way an asset's ``dagster/column_schema`` is made: from the warehouse table of
    ``core/schema.py`` or the Parquet schema of ``core/exports.py``, never from a second column list.
    Types as the warehouse (TiDB/MySQL DDL) or Arrow spells them, nullability, primary key, indexes,
    column comments, and the table's merge rule as a table constraint."""
    if isinstance(source, pa.Schema):
        return TableSchema(columns=_arrow_columns(source))
    columns, merge = _table_columns(source)
    return TableSchema(columns=columns, constraints=TableConstraints(other=merge))


def table_asset_metadata(table: sa.Table) -> dict[str, object]:
    """Definition metadata of an asset that is a warehouse table: its name and its column schema."""
    return {"dagster/table_name": table.name, "dagster/column_schema": MetadataValue.table_schema(column_schema(table))}


def export_asset_metadata(arrow_schema: pa.Schema) -> dict[str, object]:
    """Definition metadata of an asset that is a Parquet export: the column schema of its parts."""
    return {"dagster/column_schema": MetadataValue.table_schema(column_schema(arrow_schema))}


def with_code_references(defs: Definitions) -> Definitions:
    """``defs`` with every asset referencing the code that defines it (the UI's "Code" link): linked to
    the repository when ``TI_CODE_REPOSITORY_URL`` is set (branch ``TI_CODE_REPOSITORY_BRANCH``, the
    project's folder in it ``TI_CODE_REPOSITORY_PATH``), else the local file path."""
    return Definitions(
        assets=_code_references(defs.assets or []),
        schedules=defs.schedules,
        sensors=defs.sensors,
        jobs=defs.jobs,
        resources=defs.resources,
        executor=defs.executor,
        loggers=defs.loggers,
        asset_checks=defs.asset_checks,
        metadata=defs.metadata,
        component_tree=defs.component_tree,
    )


def _code_references(assets: Sequence) -> Sequence:
    with warnings.catch_warnings():  # both functions are beta in 1.13; their warning would repeat per asset
        warnings.simplefilter("ignore", BetaWarning)
        return _linked(with_source_code_references(assets))


def _linked(assets: Sequence) -> Sequence:
    url = settings.text("TI_CODE_REPOSITORY_URL")
    if not url:
        return assets
    anchor = Path(__file__).resolve().parents[1] / "__init__.py"  # ti_pipeline/__init__.py
    in_repository = (Path(settings.text("TI_CODE_REPOSITORY_PATH") or ".") / "ti_pipeline" / "__init__.py").as_posix()
    return link_code_references_to_git(
        assets,
        git_url=url.rstrip("/"),
        git_branch=settings.resolve("TI_CODE_REPOSITORY_BRANCH"),
        file_path_mapping=AnchorBasedFilePathMapping(local_file_anchor=anchor, file_anchor_path_in_repository=in_repository),
        platform="gitlab" if "gitlab" in url else "github",
    )


def accounting_metadata(acc: Accounting, extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """Every count as its own metadata entry, the balance as a table, and charts of where the
    records went and (when counted) of the classification mix."""
    counts = acc.as_dict()
    meta: dict[str, object] = {name: MetadataValue.int(value) for name, value in counts.items()}
    meta["accounting"] = MetadataValue.table(
        [TableRecord({"count": name, "records": value}) for name, value in counts.items()],
        TableSchema([TableColumn("count"), TableColumn("records", "int")]),
    )
    outcome = {"written": acc.written}
    outcome.update({f"filtered: {k}": v for k, v in acc.filtered.most_common()})
    outcome.update({f"rejected: {k}": v for k, v in acc.rejected.most_common()})
    meta["where_records_went"] = bar_chart(outcome, "outcome")
    mix = {k.split(".", 1)[1]: v for k, v in acc.figures.most_common() if k.startswith("classification.")}
    if mix:
        meta["classification_mix"] = bar_chart(mix, "classification")
    meta["dagster/row_count"] = MetadataValue.int(acc.written)
    meta.update(extra or {})
    return meta


def bar_chart(values: Mapping[str, int], label: str, width: int = 40) -> MetadataValue:
    """A horizontal bar chart as a table: one row per value with its count and a bar of ``█`` scaled
    to the largest (the UI renders it; no image service needed)."""
    top = max(values.values(), default=0) or 1
    records = [
        TableRecord({label: name, "count": value, "bar": "█" * max(1 if value else 0, round(width * value / top))})
        for name, value in values.items()
    ]
    return MetadataValue.table(records, TableSchema([TableColumn(label), TableColumn("count", "int"), TableColumn("bar")]))


def _cell(value: object) -> str | int | float | bool | None:
    """A value a table record holds: numbers and booleans as they are, bytes as hex, dates in ISO form,
    other values as text cut at 80 characters."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        return value.hex()
    text = value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat() if isinstance(value, date) \
        else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def sample_table(rows: Iterable[Mapping[str, object]], source: sa.Table | pa.Schema | None = None) -> MetadataValue:
    """A few rows as a table; its columns, typed as in ``source``'s column schema when given."""
    rows = list(rows)
    names = list(rows[0]) if rows else []
    typed = {c.name: c for c in column_schema(source).columns} if source is not None else {}
    columns = [typed.get(name) or TableColumn(name) for name in names]
    return MetadataValue.table([TableRecord({name: _cell(r[name]) for name in names}) for r in rows], TableSchema(columns))


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
