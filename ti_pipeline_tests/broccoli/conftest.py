"""Fixtures for the Broccoli tests: the fault-injecting loopback server and a fast retry policy."""

import pytest

from ti_pipeline.broccoli.client import RetryPolicy
from ti_pipeline_tests.broccoli.server import BroccoliServer

# Short delays and timeouts so fault tests run in well under a second each.
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, max_retry_after=2.0, timeout=0.5)


@pytest.fixture
def broccoli_server():
    server = BroccoliServer().start()
    yield server
    server.stop()
