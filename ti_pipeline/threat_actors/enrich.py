"""ATT&CK techniques for the actors whose content (or the ATT&CK data) changed since they were enriched.

Each actor row remembers in ``enriched_with`` the content hash and ATT&CK data version its techniques
were computed from; only actors where that differs are matched again. An actor's old techniques are
replaced in the same transaction that records the new ``enriched_with``, so a run killed half-way
leaves every actor either done or still to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import sqlalchemy as sa

from ti_pipeline.core import schema
from ti_pipeline.core.accounting import Accounting
from ti_pipeline.core.warehouse import Warehouse, batched
from ti_pipeline.threat_actors.attack import AttackCatalog, technique_rows


@dataclass
class EnrichReport:
    accounting: Accounting = field(default_factory=Accounting)
    enriched: list[str] = field(default_factory=list)
    not_mapped: list[str] = field(default_factory=list)
    methods: dict[str, int] = field(default_factory=dict)
    techniques_written: int = 0
    actors_with_techniques: int = 0


def enrichment_key(content_hash: str, catalog: AttackCatalog) -> str:
    return f"{content_hash}@{catalog.version}"[:128]


def _related_uuids(related: str | None) -> list[str]:
    try:
        return [r["dest-uuid"] for r in json.loads(related or "[]") if isinstance(r, dict) and "dest-uuid" in r]
    except ValueError:
        return []


def enrich_actors(warehouse: Warehouse, catalog: AttackCatalog, batch_actors: int = 100) -> EnrichReport:
    """Match every actor not yet enriched from its current content; write its techniques."""
    t, at = schema.threat_actors, schema.actor_techniques
    report = EnrichReport()
    acc = report.accounting
    with warehouse.engine.connect() as conn:
        actors = conn.execute(
            sa.select(t.c.actor_id, t.c.name, t.c.synonyms, t.c.refs, t.c.related, t.c.content_hash, t.c.enriched_with).where(
                t.c.removed.is_(False)
            )
        ).all()
    todo = [a for a in actors if a.enriched_with != enrichment_key(a.content_hash, catalog)]
    acc.figures["actors_already_enriched"] = len(actors) - len(todo)
    acc.read = len(todo)
    for batch in batched(todo, batch_actors):
        rows, keys = [], []
        for a in batch:
            match = catalog.match(a.name, json.loads(a.synonyms or "[]"), json.loads(a.refs or "[]"), _related_uuids(a.related))
            keys.append({"key_actor": a.actor_id, "key": enrichment_key(a.content_hash, catalog)})
            if match is None:
                acc.filter("no_attack_group_match")
                report.not_mapped.append(a.name)
                continue
            actor_rows = technique_rows(a.actor_id, match)
            if not actor_rows:
                acc.filter("attack_group_without_techniques")
                report.not_mapped.append(a.name)
                continue
            acc.written += 1
            report.enriched.append(a.name)
            report.methods[match.method] = report.methods.get(match.method, 0) + 1
            rows.extend(actor_rows)
        with warehouse.engine.begin() as conn:
            conn.execute(at.delete().where(at.c.actor_id.in_([a.actor_id for a in batch])))
            if rows:
                conn.execute(at.insert(), rows)
            conn.execute(
                t.update().where(t.c.actor_id == sa.bindparam("key_actor")).values(enriched_with=sa.bindparam("key")), keys
            )
        report.techniques_written += len(rows)
    with warehouse.engine.connect() as conn:
        report.actors_with_techniques = conn.execute(sa.select(sa.func.count(sa.distinct(at.c.actor_id)))).scalar_one()
    acc.figures.update(
        {
            "actors_enriched": len(report.enriched),
            "actors_not_mapped": len(report.not_mapped),
            "technique_rows_written": report.techniques_written,
            "actors_with_techniques": report.actors_with_techniques,
        }
    )
    return report
