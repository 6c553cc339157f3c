"""Real Malpedia-shaped snapshots for tests: the whole shipped galaxy, or a real subset of it."""

from __future__ import annotations

import copy
from functools import cache

from ti_pipeline.sample_data.malpedia_galaxy import MalpediaSnapshot


@cache
def _galaxy() -> MalpediaSnapshot:
    return MalpediaSnapshot.from_galaxy()


# Actors the tests name; the small snapshot keeps them beside every 8th actor of the galaxy.
NAMED_ACTORS = ("apt1", "apt3", "apt28", "apt29", "kimsuky", "lazarus_group", "turla")


@cache
def _small() -> MalpediaSnapshot:
    full = _galaxy()
    actors = {k: a for i, (k, a) in enumerate(sorted(full.actors.items())) if i % 8 == 0 or k in NAMED_ACTORS}
    cfr = {k: a for k, a in full.actors.items() if "cfr-type-of-incident" in a.get("meta", {})}
    actors |= dict(list(cfr.items())[:5]) | {k: a for k, a in cfr.items() if isinstance(a["meta"]["cfr-type-of-incident"], list)}
    linked = {f for a in actors.values() for f in a["families"]}
    families = {k: f for i, (k, f) in enumerate(sorted(full.families.items())) if i % 16 == 0 or k in linked}
    return MalpediaSnapshot(full.version, full.date, actors, families)


def galaxy_snapshot() -> MalpediaSnapshot:
    """All 864 actors and 3260 families of the shipped galaxy (a fresh copy: tests change it)."""
    return copy.deepcopy(_galaxy())


def small_snapshot() -> MalpediaSnapshot:
    """A real subset (~120 actors, ~210 families) for tests that sync several times."""
    return copy.deepcopy(_small())
