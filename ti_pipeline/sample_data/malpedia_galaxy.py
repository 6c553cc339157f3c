"""Malpedia-shaped data built from the real MISP galaxy snapshot shipped in ``pymispgalaxies``.

Malpedia's actors are the MISP ``threat-actor`` galaxy and its families the ``malpedia`` galaxy, so
the shipped clusters give the real content in the API's shape: actor ids are the lower-cased names
with runs of other characters as ``_`` (Malpedia's convention, e.g. ``apt28``, ``lazarus_group``),
family ids come from each family's ``malpedia.../details/<id>`` reference, and the actor ->
family links ("uses") become the actor's ``families`` and the family's ``attribution``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from ti_pipeline.threat_actors.attack import load_cluster

_DETAILS = re.compile(r"malpedia\.caad\.fkie\.fraunhofer\.de/details/([^/?#]+)")


def actor_id(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.casefold()).strip("_")


@dataclass
class MalpediaSnapshot:
    """What the API serves: a version, actors by id, families by id (mutable, for tests)."""

    version: int
    date: str
    actors: dict[str, dict[str, Any]] = field(default_factory=dict)
    families: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_galaxy(cls, clusters_dir: Path | None = None) -> MalpediaSnapshot:
        actors_cluster = load_cluster("threat-actor", clusters_dir)
        families_cluster = load_cluster("malpedia", clusters_dir)
        families: dict[str, dict[str, Any]] = {}
        family_by_uuid: dict[str, str] = {}
        for f in families_cluster["values"]:
            ids = [m.group(1) for r in f.get("meta", {}).get("refs", []) if (m := _DETAILS.search(r))]
            if not ids or ids[0] in families:
                continue
            meta = f.get("meta", {})
            families[ids[0]] = {
                "common_name": f["value"],
                "alt_names": list(meta.get("synonyms", [])),
                "attribution": [],
                "description": f.get("description", ""),
                "urls": [r for r in meta.get("refs", []) if not _DETAILS.search(r)],
                "updated": str(date(2024, 1, 1)),
                "uuid": f["uuid"],
            }
            family_by_uuid[f["uuid"]] = ids[0]
        actors: dict[str, dict[str, Any]] = {}
        for a in actors_cluster["values"]:
            used = [family_by_uuid[r["dest-uuid"]] for r in a.get("related", []) if r.get("dest-uuid") in family_by_uuid]
            for fid in used:
                families[fid]["attribution"].append(a["value"])
            actors[actor_id(a["value"])] = {
                "value": a["value"],
                "description": a.get("description", ""),
                "uuid": a["uuid"],
                "meta": a.get("meta", {}),
                "related": a.get("related", []),
                "families": sorted(used),
            }
        return cls(version=int(families_cluster.get("version", 1)), date="2024-01-01", actors=actors, families=families)

    def actor_response(self, actor_key: str) -> dict[str, Any]:
        """``/api/get/actor/<id>``: the actor with its families embedded, as the API returns them."""
        actor = dict(self.actors[actor_key])
        actor["families"] = {fid: self.families[fid] for fid in actor.get("families", []) if fid in self.families}
        return actor

    def bump(self) -> None:
        self.version += 1

    def to_json(self) -> str:
        return json.dumps(
            {"version": self.version, "date": self.date, "actors": self.actors, "families": self.families},
            ensure_ascii=False,
            indent=None,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> MalpediaSnapshot:
        d = json.loads(text)
        return cls(version=int(d["version"]), date=str(d["date"]), actors=d["actors"], families=d["families"])
