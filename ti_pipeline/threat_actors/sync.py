"""The incremental Malpedia sync: ask the version, and only when it moved fetch, diff and write.

``threat_actors`` and ``malware_families`` are synced together because one ``/api/get/version``
answers for both: when it equals the last version synced completely (table ``sync_state``), the sync
makes that one request and writes nothing. Otherwise every actor and the family list are fetched, each
record's content hash is compared with the stored one, and only new or changed rows are written
(``created_at`` kept, ``last_updated`` set); rows that vanished from Malpedia are marked ``removed``.
A record that fails to fetch or parse is quarantined and left as it was; the version is then not
recorded, so the next run tries again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ti_pipeline.core import schema
from ti_pipeline.core.accounting import Accounting, QuarantineRecord
from ti_pipeline.core.warehouse import MergeRule, Warehouse
from ti_pipeline.threat_actors.client import MalpediaClient, MalpediaError
from ti_pipeline.threat_actors.records import (
    Changes,
    RecordError,
    StoredState,
    actor_row,
    detect_changes,
    family_row,
)

SOURCE = "malpedia"


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


@dataclass
class TableSync:
    """What one table's sync saw and did; ``names`` maps a key to its display name."""

    accounting: Accounting = field(default_factory=Accounting)
    changes: Changes = field(default_factory=Changes)
    names: dict[str, str] = field(default_factory=dict)
    errors: list[QuarantineRecord] = field(default_factory=list)
    total: int = 0

    def named(self, keys: list[str]) -> list[str]:
        return [self.names.get(k, k) for k in keys]


@dataclass
class SyncReport:
    version: str
    previous_version: str | None
    actors: TableSync
    families: TableSync
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0

    @property
    def version_unchanged(self) -> bool:
        return self.version == self.previous_version and not self.actors.accounting.read

    @property
    def errors(self) -> int:
        return len(self.actors.errors) + len(self.families.errors)


def stored_version(warehouse: Warehouse) -> str | None:
    t = schema.sync_state
    with warehouse.engine.connect() as conn:
        return conn.execute(sa.select(t.c.version).where(t.c.source == SOURCE)).scalar_one_or_none()


def _stored_states(warehouse: Warehouse, table: sa.Table, key: str, name: str) -> tuple[dict[str, StoredState], dict[str, str]]:
    with warehouse.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c[key], table.c[name], table.c.content_hash, table.c.removed)).all()
    return {r[0]: StoredState(r[2], bool(r[3])) for r in rows}, {r[0]: r[1] or r[0] for r in rows}


def _count_present(warehouse: Warehouse, table: sa.Table) -> int:
    return warehouse.count(table, table.c.removed.is_(False))


def apply_changes(
    warehouse: Warehouse,
    table: sa.Table,
    key: str,
    name: str,
    listed: list[str],
    rows: Mapping[str, dict[str, Any]],
    result: TableSync,
    now: datetime,
) -> None:
    """Diff ``rows`` (key -> row of every usable record) against the table; write what changed."""
    stored, stored_names = _stored_states(warehouse, table, key, name)
    changes = detect_changes(stored, {k: r["content_hash"] for k, r in rows.items()}, listed)
    result.changes = changes
    result.names.update(stored_names)
    result.names.update({k: r[name] or k for k, r in rows.items()})
    warehouse.upsert(table, (rows[k] for k in changes.new + changes.updated), MergeRule())
    if changes.removed:
        with warehouse.engine.begin() as conn:
            for start in range(0, len(changes.removed), warehouse.batch_rows):
                chunk = changes.removed[start : start + warehouse.batch_rows]
                conn.execute(table.update().where(table.c[key].in_(chunk)).values(removed=True, last_updated=now))
    acc = result.accounting
    acc.written += len(changes.new) + len(changes.updated)
    acc.filter("unchanged_content_hash", len(changes.unchanged))
    acc.figures.update(
        {
            "new": len(changes.new),
            "updated": len(changes.updated),
            "unchanged": len(changes.unchanged),
            "removed": len(changes.removed),
            "restored": len(changes.restored),
            "errors": len(result.errors),
        }
    )
    result.total = _count_present(warehouse, table)


def _reject(result: TableSync, reason: str, source: str, detail: str) -> None:
    result.accounting.reject(reason)
    result.errors.append(QuarantineRecord(source=source, reason=f"{reason}: {detail}"[:255]))


def _rows(
    records: Mapping[str, Any], build: Callable[[str, Any, datetime], dict], result: TableSync, url: Callable[[str], str], now: datetime
) -> dict[str, dict[str, Any]]:
    rows = {}
    for key, record in records.items():
        try:
            rows[key] = build(key, record, now)
        except RecordError as exc:
            _reject(result, "malformed_record", url(key), str(exc))
    return rows


async def _fetch_actors(api: MalpediaClient, ids: list[str], concurrency: int, result: TableSync) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    fetched: dict[str, Any] = {}

    async def one(actor_key: str) -> None:
        async with gate:
            try:
                fetched[actor_key] = await api.get_actor(actor_key)
            except MalpediaError as exc:
                _reject(result, "fetch_failed", exc.url, exc.reason)

    await asyncio.gather(*(one(a) for a in ids))
    return fetched


async def sync_malpedia(
    api: MalpediaClient,
    warehouse: Warehouse,
    *,
    force: bool = False,
    concurrency: int = 4,
    now: datetime | None = None,
) -> SyncReport:
    """Sync actors and families; raises ``MalpediaError`` when the version or a list cannot be read."""
    started = time.monotonic()
    now = now or utc_now()
    actors, families = TableSync(), TableSync()
    previous = stored_version(warehouse)
    version = str((await api.get_version())["version"])
    report = SyncReport(version, previous, actors, families)
    if version == previous and not force:
        actors.total = _count_present(warehouse, schema.threat_actors)
        families.total = _count_present(warehouse, schema.malware_families)
    else:
        actor_ids = sorted(set(await api.list_actors()))
        family_records = await api.get_families()
        actors.accounting.read = len(actor_ids)
        families.accounting.read = len(family_records)
        fetched = await _fetch_actors(api, actor_ids, concurrency, actors)
        actor_rows = _rows(fetched, actor_row, actors, lambda k: api.url(f"get/actor/{k}"), now)
        family_rows = _rows(family_records, family_row, families, lambda k: api.url(f"get/family/{k}"), now)
        apply_changes(warehouse, schema.threat_actors, "actor_id", "name", actor_ids, actor_rows, actors, now)
        apply_changes(warehouse, schema.malware_families, "family_id", "common_name", list(family_records), family_rows, families, now)
        if not report.errors:
            warehouse.upsert(schema.sync_state, [{"source": SOURCE, "version": version, "synced_at": now}], MergeRule())
    report.requests, report.retries = api.stats.requests, api.stats.retries
    report.seconds = time.monotonic() - started
    return report
