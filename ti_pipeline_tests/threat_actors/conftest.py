"""A loopback Malpedia server over the real galaxy snapshot, fresh for each test (tests mutate it)."""

from __future__ import annotations

import pytest

from ti_pipeline.sample_data.malpedia_galaxy import MalpediaSnapshot
from ti_pipeline.sample_data.malpedia_server import LocalMalpediaServer
from ti_pipeline_tests.threat_actors.snapshots import galaxy_snapshot, small_snapshot


@pytest.fixture
def full_snapshot() -> MalpediaSnapshot:
    return galaxy_snapshot()


@pytest.fixture
def snapshot() -> MalpediaSnapshot:
    return small_snapshot()


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
