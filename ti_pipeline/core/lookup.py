"""What the warehouse holds about one indicator: reputation, curated tokens, customer lists, actors.

Used by ``ti-pipeline lookup VALUE`` so an engineer can check a migrated indicator end to end.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa

from ti_pipeline.core import keys, schema
from ti_pipeline.core.warehouse import Warehouse

_WORD = re.compile(r"[a-z0-9]{4,}")


def indicator_kind(value: str) -> tuple[str, str]:
    """(kind, normalised value): hash kind, ip, domain, or token for anything else."""
    text = value.strip()
    if (kind := keys.hash_kind(text.lower())) is not None:
        return kind, text.lower()
    if (ip := keys.normalise_ip(text)) is not None:
        return "ip", ip
    if (domain := keys.normalise_domain(text)) is not None:
        return "domain", domain
    return "token", text


def _rows(conn: sa.Connection, query: sa.Select) -> list[dict]:
    return [{k: _plain(v) for k, v in row._mapping.items()} for row in conn.execute(query)]


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return value


def lookup(warehouse: Warehouse, value: str) -> dict[str, object]:
    kind, key = indicator_kind(value)
    found: dict[str, object] = {"query": value, "kind": kind, "value": key}
    with warehouse.engine.connect() as conn:
        if kind in ("md5", "sha1", "sha256"):
            t = schema.ioc_file_hashes
            found["ioc_file_hashes"] = _rows(conn, sa.select(t).where(t.c[kind] == bytes.fromhex(key)))
        elif kind == "ip":
            t = schema.ioc_ips
            found["ioc_ips"] = _rows(conn, sa.select(t).where(t.c.address == key))
        elif kind == "domain":
            t = schema.ioc_domains
            found["ioc_domains"] = _rows(conn, sa.select(t).where(t.c.domain == key))
        t = schema.ioc_tokens
        found["ioc_tokens"] = _rows(conn, sa.select(t).where(t.c.token == key))
        t = schema.customer_ioc
        found["customer_ioc"] = _rows(conn, sa.select(t).where(t.c.value == key).order_by(t.c.org_id))
        names = " ".join(r.get("detection_names") or "" for r in found.get("ioc_file_hashes", []))
        found["actor_context"] = actor_context(conn, names) if names else []
    return found


def actor_context(conn: sa.Connection, detection_names: str) -> list[dict]:
    """Malpedia families named in detection names, with the actors they are attributed to and the
    number of ATT&CK techniques known for each actor."""
    words = set(_WORD.findall(detection_names.lower()))
    f, a, at = schema.malware_families, schema.threat_actors, schema.actor_techniques
    families = []
    for row in conn.execute(sa.select(f.c.family_id, f.c.common_name, f.c.alt_names, f.c.attribution).where(f.c.removed.is_(False))):
        aliases = {row.common_name or ""} | set(_json_list(row.alt_names))
        if any(alias.lower().replace(" ", "") in words for alias in aliases if len(alias) >= 4):
            families.append(row)
    context = []
    for family in families:
        actors = []
        for name in _json_list(family.attribution):
            actor = conn.execute(sa.select(a.c.actor_id, a.c.name, a.c.country).where(a.c.name == name)).first()
            if actor is None:
                continue
            techniques = conn.execute(
                sa.select(sa.func.count()).select_from(at).where(at.c.actor_id == actor.actor_id)
            ).scalar_one()
            actors.append({"actor": actor.name, "country": actor.country, "attack_techniques": techniques})
        context.append({"family": family.family_id, "name": family.common_name, "actors": actors})
    return context


def _json_list(text: str | None) -> Iterable[str]:
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def render(found: dict[str, object]) -> str:
    """A plain-text report, one section per table that holds something."""
    lines = [f"{found['query']}  ({found['kind']}: {found['value']})"]
    sections = [k for k in found if k not in ("query", "kind", "value")]
    hits = 0
    for section in sections:
        rows = found[section]
        if not rows:
            continue
        hits += len(rows)
        lines.append(f"\n{section}:")
        for row in rows:
            lines.append("  " + ", ".join(f"{k}={v}" for k, v in row.items() if v not in (None, "", [])))
    if not hits:
        lines.append("\nnothing in the warehouse")
    return "\n".join(lines)
