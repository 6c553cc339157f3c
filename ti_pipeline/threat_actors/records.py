"""Malpedia actors and families as table rows, their content hashes, and what changed since last time.

The content hash is a SHA-256 over a canonical serialisation of the content fields only (the fields
the rows store): timestamps (a family's ``updated``, the ``updated`` of families embedded in an actor)
are left out, so a re-crawl that changes nothing but dates is "unchanged". Canonical means: keys
sorted, strings stripped, a meta value given as one string equal to the same value given as a
one-element list, a null, blank or empty meta field the same as an absent one, lists of scalars
de-duplicated and sorted (the order of refs, synonyms or countries carries no meaning).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

KEY_LENGTH = 128  # schema: threat_actors.actor_id, malware_families.family_id


class RecordError(ValueError):
    """An actor or family whose shape cannot be used (the reason goes to the quarantine)."""


def canonical(value: Any) -> Any:
    """A normal form of JSON data: sorted keys, stripped strings, sorted de-duplicated scalar lists."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        items = [canonical(v) for v in value]
        if all(isinstance(v, str | int | float | bool) or v is None for v in items):
            return sorted(set(items), key=lambda v: (type(v).__name__, str(v)))
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def as_list(value: Any) -> list[str]:
    """A meta field that may be a string, a list of strings or missing, as a list of non-blank strings."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        value = [value]
    return [s for v in value if v is not None and (s := str(v).strip())]


def normalize_meta(meta: Any) -> dict[str, list[str]]:
    """Every meta field as a list of strings, so ``"China"`` and ``["China"]`` are the same content; a
    null, blank or empty field is left out, the same content as an absent one."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise RecordError(f"meta is a {type(meta).__name__}, not an object")
    return {str(k): values for k, v in meta.items() if (values := as_list(v))}


def _text(record: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = record.get(name)
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        if required:
            raise RecordError(f"missing {name}")
        return None
    if not isinstance(value, str):
        raise RecordError(f"{name} is a {type(value).__name__}, not a string")
    return value


def _key(key: str) -> str:
    """A Malpedia actor or family id as a primary key: a non-empty string of at most 128 characters."""
    if not isinstance(key, str) or not key.strip() or len(key) > KEY_LENGTH:
        raise RecordError(f"id {str(key)[:40]!r} is not a string of 1..{KEY_LENGTH} characters")
    return key


def _json_list(values: Iterable[str]) -> str:
    return json.dumps(sorted(set(values)), ensure_ascii=False)


def actor_content(actor: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an actor that make its content (embedded families by id only: theirs is separate)."""
    if not isinstance(actor, Mapping):
        raise RecordError(f"actor is a {type(actor).__name__}, not an object")
    families = actor.get("families") or {}
    if not isinstance(families, Mapping | list):
        raise RecordError(f"families is a {type(families).__name__}")
    related = actor.get("related") or []
    if not isinstance(related, list):
        raise RecordError(f"related is a {type(related).__name__}, not a list")
    return {
        "value": _text(actor, "value", required=True),
        "description": _text(actor, "description"),
        "uuid": _text(actor, "uuid"),
        "meta": normalize_meta(actor.get("meta")),
        "families": sorted(str(f) for f in families),
        "related": [
            {"dest-uuid": str(r.get("dest-uuid", "")), "type": str(r.get("type", ""))}
            for r in related
            if isinstance(r, Mapping)
        ],
    }


def actor_row(actor_id: str, actor: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The ``threat_actors`` row of one API actor (raises ``RecordError`` on an unusable shape)."""
    content = actor_content(actor)
    meta = content["meta"]
    return {
        "actor_id": _key(actor_id),
        "name": content["value"][:255],
        "uuid": (content["uuid"] or "")[:36] or None,
        "description": content["description"],
        "country": ",".join(sorted(set(meta.get("country", []))))[:64] or None,  # as the hash: order carries no meaning
        "synonyms": _json_list(meta.get("synonyms", [])),
        "refs": _json_list(meta.get("refs", [])),
        "families": json.dumps(content["families"]),
        "meta": canonical_json(meta),
        "related": canonical_json(content["related"]),
        "content_hash": content_hash(content),
        "removed": False,
        "created_at": now,
        "last_updated": now,
    }


def family_content(family: Mapping[str, Any]) -> dict[str, Any]:
    """The content fields of a family, the ones its row stores (not ``updated``, a timestamp)."""
    if not isinstance(family, Mapping):
        raise RecordError(f"family is a {type(family).__name__}, not an object")
    content: dict[str, Any] = {name: as_list(family.get(name)) for name in ("alt_names", "attribution", "urls")}
    content.update({name: _text(family, name) for name in ("common_name", "description", "uuid")})
    return content


def family_row(family_id: str, family: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The ``malware_families`` row of one API family."""
    content = family_content(family)
    updated = family.get("updated")
    return {
        "family_id": _key(family_id),
        "common_name": (content["common_name"] or "")[:255] or None,
        "uuid": (content["uuid"] or "")[:36] or None,
        "description": content["description"],
        "alt_names": _json_list(content["alt_names"]),
        "attribution": _json_list(content["attribution"]),
        "urls": _json_list(content["urls"]),
        "updated": str(updated)[:32] if updated else None,
        "content_hash": content_hash(content),
        "removed": False,
        "created_at": now,
        "last_updated": now,
    }


@dataclass(frozen=True)
class StoredState:
    content_hash: str
    removed: bool


@dataclass
class Changes:
    """Keys by what happened to them; ``restored`` ones (back after removal) are also ``updated``."""

    new: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)


def detect_changes(stored: Mapping[str, StoredState], current: Mapping[str, str], listed: Iterable[str]) -> Changes:
    """Compare fetched hashes with stored ones.

    ``current``: key -> content hash of every record fetched and usable. ``listed``: every key the
    source still lists, including those that failed to fetch: a record that failed is neither
    changed nor removed, it stays as it was.
    """
    changes = Changes()
    for key in sorted(current):
        before = stored.get(key)
        if before is None:
            changes.new.append(key)
        elif before.removed:
            changes.updated.append(key)
            changes.restored.append(key)
        elif before.content_hash != current[key]:
            changes.updated.append(key)
        else:
            changes.unchanged.append(key)
    still_listed = set(listed) | set(current)
    changes.removed = sorted(k for k, s in stored.items() if not s.removed and k not in still_listed)
    return changes
