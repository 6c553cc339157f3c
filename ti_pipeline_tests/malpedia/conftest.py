"""A loopback Malpedia server over the real galaxy snapshot, fresh for each test (tests mutate it)."""

from __future__ import annotations

import copy
from functools import cache

import pytest

from ti_pipeline.malpedia.galaxy import MalpediaSnapshot
from ti_pipeline.malpedia.local_server import LocalMalpediaServer


@cache
def _galaxy_snapshot() -> MalpediaSnapshot:
    return MalpediaSnapshot.from_galaxy()


# Actors the tests name; the small snapshot keeps them beside every 8th actor of the galaxy.
NAMED_ACTORS = ("apt1", "apt3", "apt28", "apt29", "kimsuky", "lazarus_group", "turla")


@cache
def _small_snapshot() -> MalpediaSnapshot:
    full = _galaxy_snapshot()
    actors = {k: a for i, (k, a) in enumerate(sorted(full.actors.items())) if i % 8 == 0 or k in NAMED_ACTORS}
    cfr = {k: a for k, a in full.actors.items() if "cfr-type-of-incident" in a.get("meta", {})}
    actors |= dict(list(cfr.items())[:5]) | {k: a for k, a in cfr.items() if isinstance(a["meta"]["cfr-type-of-incident"], list)}
    linked = {f for a in actors.values() for f in a["families"]}
    families = {k: f for i, (k, f) in enumerate(sorted(full.families.items())) if i % 16 == 0 or k in linked}
    return MalpediaSnapshot(full.version, full.date, actors, families)


@pytest.fixture
def full_snapshot() -> MalpediaSnapshot:
    """All 864 actors and 3260 families of the shipped galaxy."""
    return copy.deepcopy(_galaxy_snapshot())


@pytest.fixture
def snapshot() -> MalpediaSnapshot:
    """A real subset (~130 actors, ~220 families) for tests that change data between syncs."""
    return copy.deepcopy(_small_snapshot())


@pytest.fixture
def malpedia_server(snapshot: MalpediaSnapshot):
    with LocalMalpediaServer(snapshot) as server:
        yield server


@pytest.fixture
def full_malpedia_server(full_snapshot: MalpediaSnapshot):
    with LocalMalpediaServer(full_snapshot) as server:
        yield server


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
