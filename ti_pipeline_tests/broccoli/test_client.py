import asyncio
import hashlib
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from ti_pipeline.broccoli.client import (
    FAILED,
    FOUND,
    NOT_FOUND,
    REJECTED,
    BroccoliClient,
    RetryPolicy,
    parse_report,
)
from ti_pipeline.broccoli.pipeline import run_async
from ti_pipeline.broccoli.tokens import GoogleTokens
from ti_pipeline.http_retry import backoff_seconds, retry_after_seconds
from ti_pipeline.keys import InvalidKey
from ti_pipeline_tests.broccoli.conftest import FAST


def sha1(n: int) -> str:
    return hashlib.sha1(str(n).encode()).hexdigest()


def report(label: str) -> bytes:
    return orjson.dumps({"classification": label, "score": 0.93, "model": "broccoli-v7"})


def look_up(uri: str, sha1s: list[str], policy: RetryPolicy = FAST, **kwargs) -> tuple[list, BroccoliClient]:
    client = BroccoliClient(uri, policy=policy, rng=random.Random(1), **kwargs)

    async def main():
        async with client:
            return await client.lookup_many(sha1s)

    return run_async(main()), client


def test_every_sha1_ends_found_or_not_found_under_injected_faults(broccoli_server):
    sha1s = [sha1(n) for n in range(200)]
    for n, s in enumerate(sha1s):
        if n % 4:
            broccoli_server.objects[s] = report(["malware", "pua", "ransomware"][n % 3])
    faults = {0: [("429", 0)], 1: [("503",), ("503",)], 2: [("slow", 2.5)], 3: [("cut",)],
              5: [("cut",), ("429", 0), ("503",)], 6: [("drop",), ("drop",)]}
    for n, plan in faults.items():
        broccoli_server.faults[sha1s[n]] = list(plan)

    results, client = look_up(broccoli_server.url, sha1s, concurrency=50)

    assert [r.sha1 for r in results] == sha1s
    assert {r.outcome for r in results} == {FOUND, NOT_FOUND}
    assert [r.sha1 for r in results if r.outcome == NOT_FOUND] == [s for n, s in enumerate(sha1s) if n % 4 == 0]
    assert {(r.label, r.classification) for r in results if r.outcome == FOUND} == {
        ("malware", "MALWARE"), ("pua", "UNWANTED"), ("ransomware", "RANSOMWARE"),
    }
    # aiohttp itself resends a GET once when a reused connection drops before any answer, so a "drop"
    # may not reach our retry loop; a body cut half-way always does.
    assert client.stats.retry_reasons["http_429"] == 2
    assert client.stats.retry_reasons["http_503"] == 3
    assert client.stats.retry_reasons["timeout"] == 1
    assert client.stats.retry_reasons["connection:ClientPayloadError"] == 2
    assert client.stats.retried == 8 + client.stats.retry_reasons["connection:ServerDisconnectedError"]
    assert [r.attempts for r in results[:6]] == [2, 3, 2, 2, 1, 4]
    assert len(broccoli_server.requests[sha1s[6]]) == 3
    assert broccoli_server.request_count == 200 + 10


def test_retry_after_is_honoured(broccoli_server):
    target = sha1(1)
    broccoli_server.objects[target] = report("malware")
    broccoli_server.faults[target] = [("429", 1)]

    [result], client = look_up(broccoli_server.url, [target])

    assert result.outcome == FOUND
    first, second = broccoli_server.requests[target]
    assert second - first >= 0.95  # the backoff alone would wait at most 0.05 s
    assert client.stats.retry_reasons == {"http_429": 1}


def test_a_lookup_that_keeps_failing_ends_failed_with_its_reason(broccoli_server):
    always_503, forbidden, fine = sha1(1), sha1(2), sha1(3)
    broccoli_server.faults[always_503] = [("always", ("503",))]
    broccoli_server.faults[forbidden] = [("403",)]
    broccoli_server.objects[fine] = report("hacktool")

    results, client = look_up(broccoli_server.url, [always_503, forbidden, fine])

    assert [(r.outcome, r.http_status, r.reason, r.attempts) for r in results] == [
        (FAILED, 503, "http_503 after 4 tries", 4),
        (FAILED, 403, "http_403", 1),  # permanent: not retried
        (FOUND, 200, None, 1),
    ]
    assert len(broccoli_server.requests[always_503]) == 4
    assert client.stats.retried == 3


def test_malformed_bodies_are_rejected_with_a_reason_and_not_retried(broccoli_server):
    bodies = {
        sha1(1): b'{"classification": "malw',
        sha1(2): b"[1, 2]",
        sha1(3): b'{"score": 1}',
        sha1(4): b'{"classification": 7}',
        sha1(5): b'{"classification": "  PUA "}',
    }
    broccoli_server.objects.update(bodies)

    results, _ = look_up(broccoli_server.url, list(bodies))

    assert [(r.outcome, r.reason, r.classification) for r in results] == [
        (REJECTED, "malformed_json", None),
        (REJECTED, "not_a_json_object", None),
        (REJECTED, "missing_classification", None),
        (REJECTED, "classification_not_a_string", None),
        (FOUND, None, "UNWANTED"),
    ]
    assert results[0].excerpt == b'{"classification": "malw'
    assert broccoli_server.request_count == 5


@pytest.mark.parametrize(
    "value", ["../../etc/passwd", "A" * 40, "g" * 40, "a" * 39, "a" * 41, "", "a" * 20 + "/" + "a" * 19, " " + "a" * 40]
)
def test_invalid_sha1s_are_rejected_before_any_url_is_built(broccoli_server, value):
    [result], _ = look_up(broccoli_server.url, [value])

    assert (result.outcome, result.reason, result.http_status) == (REJECTED, "invalid_sha1", 0)
    assert broccoli_server.request_count == 0
    with pytest.raises(InvalidKey):
        BroccoliClient(broccoli_server.url).url(value)


def test_unknown_labels_map_to_unknown_and_are_marked(broccoli_server):
    broccoli_server.objects[sha1(1)] = report("coinminer-v2")
    [result], _ = look_up(broccoli_server.url, [sha1(1)])
    assert (result.outcome, result.label, result.classification, result.known_label) == (
        FOUND, "coinminer-v2", "UNKNOWN", False,
    )


def test_file_store(tmp_path):
    (tmp_path / sha1(1)).write_bytes(report("suspicious"))
    (tmp_path / sha1(2)).write_bytes(b"not json")

    results, _ = look_up(tmp_path.as_uri(), [sha1(1), sha1(2), sha1(3), "../x"])

    assert [(r.outcome, r.classification, r.http_status, r.reason) for r in results] == [
        (FOUND, "SUSPICIOUS", 200, None),
        (REJECTED, None, 200, "malformed_json"),
        (NOT_FOUND, None, 404, None),
        (REJECTED, None, 0, "invalid_sha1"),
    ]


def test_gcs_json_api_on_the_emulator(gcs_bucket):
    client = storage.Client(project="ti-pipeline", credentials=AnonymousCredentials())
    bucket = client.bucket(gcs_bucket)
    bucket.blob(f"latest-reports/{sha1(1)}").upload_from_string(report("pua"))
    bucket.blob(f"latest-reports/{sha1(2)}").upload_from_string(report("malware"))
    bucket.blob(f"other/{sha1(3)}").upload_from_string(report("malware"))

    results, broccoli = look_up(f"gs://{gcs_bucket}/latest-reports", [sha1(1), sha1(2), sha1(3)], concurrency=4)

    assert [(r.outcome, r.classification, r.http_status) for r in results] == [
        (FOUND, "UNWANTED", 200), (FOUND, "MALWARE", 200), (NOT_FOUND, None, 404),
    ]
    assert broccoli.tokens.refreshes == 0  # anonymous against the emulator


def test_gcs_urls_use_the_json_api(monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    client = BroccoliClient("gs://broccoli-enricher/latest-reports", tokens=GoogleTokens(StubCredentials()))
    assert client.url("a" * 40) == (
        "https://storage.googleapis.com/storage/v1/b/broccoli-enricher/o/latest-reports%2F" + "a" * 40 + "?alt=media"
    )


class StubCredentials:
    """Stands in for Google's OAuth endpoint (no network here): each refresh mints the next token."""

    def __init__(self, lifetime: timedelta = timedelta(hours=1)):
        self.lifetime = lifetime
        self.calls = 0
        self.token: str | None = None
        self.expiry: datetime | None = None

    def refresh(self, _request) -> None:
        self.calls += 1
        self.token = f"tok-{self.calls}"
        self.expiry = (datetime.now(UTC) + self.lifetime).replace(tzinfo=None)


def test_token_is_fetched_once_for_concurrent_lookups_and_refreshed_before_expiry():
    now = [datetime.now(UTC).timestamp()]
    tokens = GoogleTokens(StubCredentials(), refresh_margin=300, clock=lambda: now[0])

    async def many():
        return await asyncio.gather(*(tokens.headers() for _ in range(50)))

    headers = asyncio.run(many())
    assert {h["Authorization"] for h in headers} == {"Bearer tok-1"}
    now[0] += 3600 - 301  # still more than the margin before expiry
    assert asyncio.run(tokens.headers())["Authorization"] == "Bearer tok-1"
    now[0] += 2  # within the margin: refreshed before it expires
    assert asyncio.run(tokens.headers())["Authorization"] == "Bearer tok-2"
    tokens.invalidate()
    assert asyncio.run(tokens.headers())["Authorization"] == "Bearer tok-3"
    assert tokens.refreshes == 3


def test_a_401_refreshes_the_token_and_retries(broccoli_server):
    broccoli_server.required_token = "tok-2"  # the first token is refused, as after a revocation
    broccoli_server.objects[sha1(1)] = report("maltool")
    tokens = GoogleTokens(StubCredentials())

    [result], client = look_up(broccoli_server.url, [sha1(1)], tokens=tokens)

    assert (result.outcome, result.classification, result.attempts) == (FOUND, "MALTOOL", 2)
    assert tokens.refreshes == 2
    assert client.stats.retry_reasons == {"http_401": 1}


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    policy = RetryPolicy(base_delay=0.25, max_delay=30.0)
    rng = random.Random(7)
    for retry in range(10):
        ceiling = min(30.0, 0.25 * 2**retry)
        delays = [backoff_seconds(retry, base=policy.base_delay, cap=policy.max_delay, rand=rng.random) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) == 50  # jittered


def test_retry_after_parsing():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("7", now.timestamp()) == 7.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now.timestamp()) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30), usegmt=True), now.timestamp()) == 0.0
    assert retry_after_seconds("soon", now.timestamp()) is None
    assert retry_after_seconds(None, now.timestamp()) is None


def test_parse_report():
    assert parse_report(b'{"classification": "malware", "x": 1}') == ("malware", None)
    assert parse_report(b"") == (None, "malformed_json")
    assert parse_report(b'{"classification": ""}') == (None, "classification_not_a_string")
    assert parse_report(b'{"classification": null}') == (None, "missing_classification")
