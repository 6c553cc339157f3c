"""Fixtures for the Broccoli tests: the fault-injecting loopback server and a fast retry policy."""

import pytest

from ti_pipeline.vt_feed.broccoli.client import RetryPolicy
from ti_pipeline_tests.vt_feed.broccoli.server import BroccoliServer

# Short backoff so fault tests are quick; a timeout long enough that only the injected "slow" faults hit it
# on a busy machine.
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, max_retry_after=2.0, timeout=1.5)


@pytest.fixture
def broccoli_server():
    server = BroccoliServer().start()
    yield server
    server.stop()
