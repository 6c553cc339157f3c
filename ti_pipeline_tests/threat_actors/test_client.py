"""The API client against the loopback server: retries on 429/5xx honouring Retry-After, clear errors."""

from __future__ import annotations

import asyncio

import pytest

from ti_pipeline.sample_data.malpedia_server import LocalMalpediaServer
from ti_pipeline.threat_actors.budget import RequestBudget
from ti_pipeline.threat_actors.client import MalpediaClient, MalpediaError
from ti_pipeline_tests.vt_feed.broccoli.server import BigBody, BroccoliServer

UNLIMITED = [(1_000_000, 60.0)]
MiB = 1 << 20


def call(server: LocalMalpediaServer, coro_fn, **client_args):
    async def run():
        async with MalpediaClient(server.base_url, budget=RequestBudget(UNLIMITED), backoff_base=0.01, **client_args) as api:
            return await coro_fn(api), api

    return asyncio.run(run())


def test_reads_version_list_actor_and_families(malpedia_server, snapshot):
    version, _ = call(malpedia_server, lambda api: api.get_version())
    ids, _ = call(malpedia_server, lambda api: api.list_actors())
    actor, _ = call(malpedia_server, lambda api: api.get_actor("apt28"))
    families, _ = call(malpedia_server, lambda api: api.get_families())
    assert version == {"version": snapshot.version, "date": snapshot.date}
    assert ids == sorted(snapshot.actors)
    assert actor["value"] == "APT28" and actor["uuid"] == snapshot.actors["apt28"]["uuid"]
    assert len(families) == len(snapshot.families)
    assert malpedia_server.requests == ["/api/get/version", "/api/list/actors", "/api/get/actor/apt28", "/api/get/families"]


def test_429_is_retried_after_the_servers_retry_after(malpedia_server, snapshot):
    malpedia_server.fail("/api/get/version", status=429, times=2, retry_after="1")
    version, api = call(malpedia_server, lambda api: api.get_version())
    assert version["version"] == snapshot.version
    assert malpedia_server.requests == ["/api/get/version"] * 3
    assert api.stats.requests == 3 and api.stats.retries == 2
    assert api.stats.retry_wait >= 2.0  # each retry waited at least the Retry-After second


def test_5xx_is_retried_with_backoff(malpedia_server, snapshot):
    malpedia_server.fail("/api/list/actors", status=503, times=3, retry_after=None)
    ids, api = call(malpedia_server, lambda api: api.list_actors())
    assert ids == sorted(snapshot.actors)
    assert api.stats.retries == 3
    assert malpedia_server.requests == ["/api/list/actors"] * 4


def test_gives_up_after_max_retries_naming_the_url(malpedia_server):
    malpedia_server.fail("/api/get/version", status=500, times=10, retry_after="0")
    with pytest.raises(MalpediaError) as err:
        call(malpedia_server, lambda api: api.get_version(), max_retries=2)
    assert err.value.status == 500
    assert str(err.value) == f"{malpedia_server.base_url}/get/version: HTTP 500, gave up after 3 attempts"
    assert malpedia_server.requests == ["/api/get/version"] * 3


def test_a_retry_after_beyond_the_limit_fails_at_once(malpedia_server):
    malpedia_server.fail("/api/get/version", status=429, times=1, retry_after="7200")
    with pytest.raises(MalpediaError, match="asks to wait 7200s"):
        call(malpedia_server, lambda api: api.get_version(), max_retry_wait=3600.0)
    assert malpedia_server.requests == ["/api/get/version"]


def test_other_client_errors_are_not_retried(malpedia_server):
    with pytest.raises(MalpediaError) as err:
        call(malpedia_server, lambda api: api.get_actor("no_such_actor"))
    assert err.value.status == 404
    assert err.value.url == f"{malpedia_server.base_url}/get/actor/no_such_actor"
    assert malpedia_server.requests == ["/api/get/actor/no_such_actor"]


def test_connection_refused_is_retried_then_named(unused_port):
    async def run():
        url = f"http://127.0.0.1:{unused_port}/api"
        async with MalpediaClient(url, budget=RequestBudget(UNLIMITED), backoff_base=0.01, max_retries=1) as api:
            await api.get_version()

    with pytest.raises(MalpediaError, match=r"/api/get/version: ClientConnectorError.*gave up after 2 attempts") as err:
        asyncio.run(run())
    assert err.value.status is None


def test_token_goes_in_the_authorization_header_and_nowhere_else(snapshot):
    secret = "s3cr3t-token-value"
    with LocalMalpediaServer(snapshot, token=secret) as server:
        version, api = call(server, lambda api: api.get_version(), token=secret)
        assert version["version"] == snapshot.version
        assert secret not in repr(api)
        with pytest.raises(MalpediaError) as err:
            call(server, lambda api: api.get_version(), token="wrong")
        assert err.value.status == 403 and "wrong" not in str(err.value)


def test_the_budget_schedules_the_clients_requests(malpedia_server):
    """Two requests a minute: the 3rd and 5th of five requests wait for the window (a fake clock: no waiting)."""
    clock, slept = [0.0], []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    async def run():
        budget = RequestBudget([(2, 60.0)], clock=lambda: clock[0], sleep=fake_sleep)
        async with MalpediaClient(malpedia_server.base_url, budget=budget) as api:
            for _ in range(5):
                await api.get_version()
        return budget

    budget = asyncio.run(run())
    assert slept == [60.0, 60.0] and budget.waited == 120.0
    assert malpedia_server.requests == ["/api/get/version"] * 5


@pytest.fixture
def huge_actor_server():
    """Serves ``/api/get/actor/<id>`` from generated bodies (the Broccoli test server streams them)."""
    server = BroccoliServer(prefix="/api/get/actor").start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    "body",
    [BigBody(50 * MiB), BigBody(5 * MiB), BigBody(5 * MiB, declare_length=True), BigBody(50 * MiB, gzip=True)],
    ids=["50MiB-chunked", "5MiB-chunked", "5MiB-content-length", "gzip-bomb"],
)
def test_a_body_over_the_cap_fails_for_good_naming_the_endpoint(huge_actor_server, body):
    huge_actor_server.objects["apt-huge"] = body
    base_url = f"http://127.0.0.1:{huge_actor_server.port}/api"

    async def run():
        async with MalpediaClient(base_url, budget=RequestBudget(UNLIMITED), backoff_base=0.01) as api:
            await api.get_actor("apt-huge")

    with pytest.raises(MalpediaError) as err:
        asyncio.run(run())
    assert (err.value.url, err.value.status) == (f"{base_url}/get/actor/apt-huge", 200)
    assert str(err.value) == f"{base_url}/get/actor/apt-huge: response body over the 1048576-byte cap; not read, not retried"
    assert len(huge_actor_server.requests["apt-huge"]) == 1
    if body.size == 50 * MiB and not body.gzip:
        assert huge_actor_server.sent["apt-huge"] < 16 * MiB  # the client hung up; the socket buffers took the rest


def test_the_family_catalogue_has_a_cap_of_its_own(malpedia_server, snapshot):
    """``get/families`` is every family in one object (2.8 MB for the galaxy, synced under the default caps
    in test_sync), more than the 1 MiB any other answer may have."""
    families, _ = call(malpedia_server, lambda api: api.get_families(), max_response_bytes=1_000)
    assert len(families) == len(snapshot.families)
    with pytest.raises(MalpediaError, match=r"/get/families: response body over the 100000-byte cap; not read, not retried$"):
        call(malpedia_server, lambda api: api.get_families(), max_families_bytes=100_000)
    with pytest.raises(MalpediaError, match=r"/get/version: response body over the 39-byte cap; not read, not retried$"):
        call(malpedia_server, lambda api: api.get_version(), max_response_bytes=39)
    version, _ = call(malpedia_server, lambda api: api.get_version(), max_response_bytes=40)
    assert version == {"version": snapshot.version, "date": snapshot.date}
