import asyncio
import hashlib
import random
import tracemalloc
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from ti_pipeline.core.accounting import QuarantineRecord
from ti_pipeline.core.http import MAX_RESPONSE_BYTES, READ_CHUNK_BYTES, ResponseTooLarge, read_capped
from ti_pipeline.core.keys import InvalidKey
from ti_pipeline.core.objectstore import LocalStore
from ti_pipeline.core.retry import backoff_seconds, retry_after_seconds
from ti_pipeline.vt_feed.broccoli.client import (
    FAILED,
    FOUND,
    NOT_FOUND,
    REJECTED,
    BroccoliClient,
    RetryPolicy,
    parse_report,
)
from ti_pipeline.vt_feed.broccoli.pipeline import classify_day, run_async
from ti_pipeline.vt_feed.broccoli.tokens import GoogleTokens
from ti_pipeline_tests.vt_feed.broccoli.conftest import FAST
from ti_pipeline_tests.vt_feed.broccoli.server import BigBody
from ti_pipeline_tests.vt_feed.broccoli.vt_export import write_vt_export

MiB = 1 << 20
TOO_LARGE = "response_too_large: more than 1048576 bytes"
BIG_EXCERPT = (BigBody.HEAD + b"x" * 256)[:256]  # the start of a refused BigBody, kept for the quarantine


def sha1(n: int) -> str:
    return hashlib.sha1(str(n).encode()).hexdigest()


def report(label: str) -> bytes:
    return orjson.dumps({"classification": label, "score": 0.93, "model": "broccoli-v7"})


def padded_report(label: str, size: int) -> bytes:
    """A well-formed object of exactly ``size`` bytes."""
    body = orjson.dumps({"classification": label, "pad": ""})
    return orjson.dumps({"classification": label, "pad": "x" * (size - len(body))})


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


@pytest.mark.parametrize(
    ("body", "excerpt", "sent_below"),
    [
        # Chunked, no length: cut once the cap is passed. Of 50 MiB the server can hand over only what
        # the socket buffers take before the client hangs up (of 5 MiB, possibly all of it).
        (BigBody(50 * MiB), BIG_EXCERPT, 16 * MiB),
        (BigBody(5 * MiB), BIG_EXCERPT, None),
        (BigBody(5 * MiB, declare_length=True), b"", None),  # refused on its Content-Length, nothing read
        (BigBody(50 * MiB, gzip=True), BIG_EXCERPT, None),  # ~50 KB on the wire: the decompressed size counts
    ],
    ids=["50MiB-chunked", "5MiB-chunked", "5MiB-content-length", "gzip-bomb"],
)
def test_a_body_over_the_cap_is_rejected_unread_and_not_retried(broccoli_server, body, excerpt, sent_below):
    big, small = sha1(1), sha1(2)
    broccoli_server.objects.update({big: body, small: report("pua")})
    if body.gzip:
        assert body.wire_size < MAX_RESPONSE_BYTES // 16
    client = BroccoliClient(broccoli_server.url, policy=FAST, rng=random.Random(1))

    async def main():
        async with client:
            warm = await client.lookup(small)  # imports and the connection are set up outside the measurement
            tracemalloc.start()
            try:
                result, peak = await client.lookup(big), tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            return warm, result, peak, await client.lookup(small)  # the half-read connection is not reused

    warm, result, peak, after = run_async(main())

    assert [(x.outcome, x.classification) for x in (warm, after)] == [(FOUND, "UNWANTED")] * 2
    assert (result.outcome, result.http_status, result.reason, result.attempts, result.excerpt) == (
        REJECTED, 200, TOO_LARGE, 1, excerpt,
    )
    assert len(broccoli_server.requests[big]) == 1
    # Memory stays near the cap whatever the body's size: the cap, a chunk, aiohttp's buffers.
    assert peak < 4 * MAX_RESPONSE_BYTES
    if sent_below is not None:
        assert broccoli_server.sent[big] < sent_below


def test_a_body_of_exactly_the_cap_is_read(broccoli_server):
    at_cap, over = sha1(1), sha1(2)
    broccoli_server.objects.update({at_cap: padded_report("pua", MAX_RESPONSE_BYTES), over: padded_report("pua", MAX_RESPONSE_BYTES + 1)})

    results, _ = look_up(broccoli_server.url, [at_cap, over])

    assert [(r.outcome, r.classification, r.reason) for r in results] == [
        (FOUND, "UNWANTED", None), (REJECTED, None, TOO_LARGE),
    ]


def test_the_cap_is_configurable(broccoli_server):
    broccoli_server.objects[sha1(1)] = report("pua")

    [result], _ = look_up(broccoli_server.url, [sha1(1)], max_response_bytes=len(report("pua")) - 1)

    assert (result.outcome, result.reason) == (REJECTED, f"response_too_large: more than {len(report('pua')) - 1} bytes")


def test_an_oversized_object_is_quarantined_with_its_url_and_the_day_still_publishes(broccoli_server, tmp_path):
    export = LocalStore(tmp_path / "export")
    big, fine = sha1(1), sha1(2)
    write_vt_export(export, "2020-11-05", [[big, fine]])
    broccoli_server.objects.update({big: BigBody(50 * MiB), fine: report("malware")})
    client = BroccoliClient(broccoli_server.url, policy=FAST, rng=random.Random(1))

    result = classify_day(export, client, "2020-11-05", already_classified=lambda sha1s: sha1s.slice(0, 0))

    assert result.failed == []
    assert result.published is not None
    assert result.quarantine == [QuarantineRecord(client.url(big), TOO_LARGE, excerpt=BIG_EXCERPT.hex())]
    acc = result.accounting
    assert (acc.read, acc.written, dict(acc.rejected), acc.unaccounted) == (2, 1, {TOO_LARGE: 1}, 0)


def test_file_store_objects_are_bounded_by_their_size_before_reading(tmp_path):
    (tmp_path / sha1(1)).write_bytes(padded_report("pua", MAX_RESPONSE_BYTES))
    (tmp_path / sha1(2)).write_bytes(padded_report("pua", MAX_RESPONSE_BYTES + 1))
    with open(tmp_path / sha1(3), "wb") as sparse:  # 50 GiB that take no disk: only the stat is read
        sparse.write(b'{"classification": ')
        sparse.truncate(50 << 30)

    results, _ = look_up(tmp_path.as_uri(), [sha1(1), sha1(2), sha1(3)])

    assert [(r.outcome, r.classification, r.reason, r.excerpt) for r in results] == [
        (FOUND, "UNWANTED", None, b""),
        (REJECTED, None, TOO_LARGE, padded_report("pua", MAX_RESPONSE_BYTES + 1)[:256]),
        (REJECTED, None, TOO_LARGE, b'{"classification": ' + bytes(256 - 19)),
    ]


def test_gcs_objects_over_the_cap_are_rejected(gcs_bucket):
    client = storage.Client(project="ti-pipeline", credentials=AnonymousCredentials())
    bucket = client.bucket(gcs_bucket)
    bucket.blob(f"latest-reports/{sha1(1)}").upload_from_string(padded_report("pua", MAX_RESPONSE_BYTES))
    bucket.blob(f"latest-reports/{sha1(2)}").upload_from_string(padded_report("pua", MAX_RESPONSE_BYTES + 1))

    results, _ = look_up(f"gs://{gcs_bucket}/latest-reports", [sha1(1), sha1(2)])

    assert [(r.outcome, r.classification, r.http_status, r.reason) for r in results] == [
        (FOUND, "UNWANTED", 200, None), (REJECTED, None, 200, TOO_LARGE),
    ]


class EndlessBody:
    """A response with no length whose body never ends; counts the bytes the reader took."""

    content_length = None

    def __init__(self):
        self.content = self
        self.taken = 0

    async def iter_chunked(self, n: int):
        while True:
            self.taken += n
            yield b"x" * n


def test_read_capped_takes_at_most_one_chunk_past_the_cap():
    body = EndlessBody()

    with pytest.raises(ResponseTooLarge) as err:
        asyncio.run(read_capped(body, MAX_RESPONSE_BYTES))

    assert body.taken == MAX_RESPONSE_BYTES + READ_CHUNK_BYTES
    assert (str(err.value), err.value.head) == (TOO_LARGE, b"x" * 256)
