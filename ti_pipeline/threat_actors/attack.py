"""MITRE ATT&CK techniques of a threat actor, from the ATT&CK data shipped in ``pymispgalaxies``.

Groups come from the ``mitre-intrusion-set`` galaxy cluster, techniques from ``mitre-attack-pattern``;
nothing is downloaded. An actor is matched to one group, by the strongest evidence found, in order:

=================  ==========  =======================================================================
method             confidence  evidence
=================  ==========  =======================================================================
``external_id``    1.0         the actor's refs link the group's page (attack.mitre.org/groups/Gnnnn)
``galaxy_relation`` 0.95       the actor's galaxy ``related`` entries name the group's UUID
``name``           0.9         the actor's name is the group's name
``synonym``        0.75        a name or synonym of the actor is a name or synonym of the group
=================  ==========  =======================================================================

A group ATT&CK revoked in favour of another (G0058 -> G0059) stands for its replacement, by id, UUID
and names. Names compare case- and punctuation-insensitively ("APT 28" = "apt28"). When one kind of evidence
points at several groups, the group sharing the most names wins (then the lowest group id) and the
confidence drops by 0.2, so ambiguous matches can be told apart.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIDENCE = {"external_id": 1.0, "galaxy_relation": 0.95, "name": 0.9, "synonym": 0.75}
AMBIGUITY_PENALTY = 0.2
_GROUP_URL = re.compile(r"attack\.mitre\.org/groups/(G\d{4})", re.IGNORECASE)
_ID_SUFFIX = re.compile(r"\s+-\s+([GT]\d{4}(?:\.\d{3})?)$")


def galaxy_clusters_dir() -> Path:
    """The MISP galaxy clusters folder inside the installed ``pymispgalaxies`` package."""
    import pymispgalaxies

    return Path(pymispgalaxies.__file__).parent / "data" / "misp-galaxy" / "clusters"


def load_cluster(name: str, clusters_dir: Path | None = None) -> dict[str, Any]:
    path = (clusters_dir or galaxy_clusters_dir()) / f"{name}.json"
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def name_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def strip_id_suffix(value: str) -> str:
    """``"APT28 - G0007"`` -> ``"APT28"``."""
    return _ID_SUFFIX.sub("", value).strip()


@dataclass(frozen=True)
class Technique:
    technique_id: str
    name: str
    tactic: str


@dataclass(frozen=True)
class AttackGroup:
    group_id: str
    name: str
    uuid: str
    names: frozenset[str]  # name keys of the group's name and synonyms
    techniques: tuple[Technique, ...]


@dataclass(frozen=True)
class Match:
    group: AttackGroup
    method: str
    confidence: float


class AttackCatalog:
    """ATT&CK groups with their techniques, indexed by id, UUID and name key."""

    def __init__(
        self,
        groups: Iterable[AttackGroup],
        version: str,
        aliases: Mapping[str, set[str]] | None = None,
        revoked: Mapping[str, str] | None = None,
    ):
        self.groups = {g.group_id: g for g in groups}
        self.version = version
        self.by_uuid = {g.uuid: g for g in self.groups.values()}
        # A revoked group's id and UUID -> its replacement's id (ATT&CK sends the old page to the new one).
        self.revoked = {k: v for k, v in (revoked or {}).items() if v in self.groups}
        self.by_name: dict[str, set[str]] = defaultdict(set)
        for g in self.groups.values():
            for key in g.names:
                self.by_name[key].add(g.group_id)
        for key, group_ids in (aliases or {}).items():
            self.by_name[key].update(group_ids)

    @classmethod
    def from_galaxy(cls, clusters_dir: Path | None = None) -> AttackCatalog:
        sets = load_cluster("mitre-intrusion-set", clusters_dir)
        patterns = load_cluster("mitre-attack-pattern", clusters_dir)
        techniques = {p["uuid"]: _technique(p) for p in patterns["values"]}
        by_uuid = {s["uuid"]: s for s in sets["values"]}
        groups, aliases, revoked = [], defaultdict(set), {}
        for s in sets["values"]:
            revoked_by = [r["dest-uuid"] for r in s.get("related", []) if r.get("type") == "revoked-by"]
            names = _group_names(s)
            if revoked_by:
                # A revoked group lives on in its replacement: its names lead there.
                for uuid in revoked_by:
                    if uuid in by_uuid:
                        replacement = by_uuid[uuid]["meta"]["external_id"]
                        revoked[s["meta"]["external_id"]] = revoked[s["uuid"]] = replacement
                        for key in names:
                            aliases[key].add(replacement)
                continue
            used = {techniques[r["dest-uuid"]] for r in s.get("related", []) if r.get("dest-uuid") in techniques}
            groups.append(
                AttackGroup(
                    group_id=s["meta"]["external_id"],
                    name=strip_id_suffix(s["value"]),
                    uuid=s["uuid"],
                    names=frozenset(names),
                    techniques=tuple(sorted(used, key=lambda t: t.technique_id)),
                )
            )
        version = f"intrusion-set-{sets.get('version')}/attack-pattern-{patterns.get('version')}"
        return cls(groups, version, aliases, revoked)

    def group_id(self, key: str) -> str | None:
        """The group an ATT&CK id or UUID stands for (a revoked group's: its replacement), or None."""
        if key in self.groups:
            return key
        if key in self.by_uuid:
            return self.by_uuid[key].group_id
        return self.revoked.get(key)

    def match(self, name: str, synonyms: Iterable[str], refs: Iterable[str], related_uuids: Iterable[str]) -> Match | None:
        """The ATT&CK group of an actor, or None when nothing links it to one."""
        actor_names = {name_key(n) for n in [name, *synonyms]} - {""}
        evidence = (
            ("external_id", {self.group_id(m.upper()) for r in refs for m in _GROUP_URL.findall(r)} - {None}),
            ("galaxy_relation", {self.group_id(u) for u in related_uuids} - {None}),
            ("name", set(self.by_name.get(name_key(name), ()))),
            ("synonym", {gid for key in actor_names for gid in self.by_name.get(key, ())}),
        )
        for method, candidates in evidence:
            if not candidates:
                continue
            best = min(candidates, key=lambda gid: (-len(self.groups[gid].names & actor_names), gid))
            confidence = CONFIDENCE[method] - (AMBIGUITY_PENALTY if len(candidates) > 1 else 0.0)
            return Match(self.groups[best], method, round(confidence, 2))
        return None


def _group_names(intrusion_set: Mapping[str, Any]) -> set[str]:
    names = [strip_id_suffix(intrusion_set["value"]), *intrusion_set.get("meta", {}).get("synonyms", [])]
    return {name_key(n) for n in names} - {""}


def _technique(pattern: Mapping[str, Any]) -> Technique:
    meta = pattern.get("meta", {})
    tactics = sorted({kc.split(":", 1)[1] for kc in meta.get("kill_chain", []) if ":" in kc})
    return Technique(
        technique_id=meta.get("external_id") or strip_id_suffix(pattern["value"]),
        name=strip_id_suffix(pattern["value"])[:255],
        tactic=",".join(tactics)[:255],
    )


def technique_rows(actor_id: str, match: Match) -> list[dict[str, Any]]:
    """The ``actor_techniques`` rows of a matched actor, one per technique of its group."""
    return [
        {
            "actor_id": actor_id,
            "technique_id": t.technique_id,
            "technique_name": t.name,
            "tactic": t.tactic,
            "match_method": match.method,
            "confidence": match.confidence,
            "attack_group": f"{match.group.name} ({match.group.group_id})"[:255],
        }
        for t in match.group.techniques
    ]
