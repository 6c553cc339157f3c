"""The one retry policy: exact waits from a seeded or fixed random source, the cap, the attempt count,
Retry-After, the loops (sync and async) and their log lines; and every retry loop's own policy."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from ti_pipeline.core.retry import Backoff, TryAgain, retry_after_seconds, retry_call, retry_call_async


def failing(times: int, exc: Exception, result: str = "done"):
    """A callable that raises ``exc`` on its first ``times`` calls, then returns ``result``; counts its calls."""
    calls = []

    def work() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return result

    return work, calls


def test_waits_are_exact_for_a_seeded_random_source():
    sleeps: list[float] = []
    work, calls = failing(4, TryAgain("busy"))
    assert retry_call(work, Backoff(5, 1.0, 5.0), what="x", rand=random.Random(42).random, sleep=sleeps.append) == "done"
    # min(5, 2**n) * (0.5 + u/2) with u = random.Random(42)'s first four draws; the 4th is capped at 5.
    assert sleeps == [0.8197133992289418, 1.025010755222667, 2.5500586367382385, 3.058026845372057]
    assert len(calls) == 5


def test_equal_jitter_between_half_and_all_of_the_capped_ceiling():
    backoff = Backoff(attempts=6, base=1.0, cap=300.0)
    assert [backoff.delay(a, rand=lambda: 1.0) for a in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert [backoff.delay(a, rand=lambda: 0.0) for a in range(3)] == [0.5, 1.0, 2.0]
    big = Backoff(attempts=6, base=100.0, cap=300.0)
    assert big.delay(0, rand=lambda: 1.0) == 100.0
    assert big.delay(5, rand=lambda: 1.0) == 300.0
    assert big.delay(50, rand=lambda: 0.0) == 150.0


def test_retry_after_is_a_floor_with_a_spread_and_is_cut_at_its_limit():
    backoff = Backoff(attempts=6, base=1.0, cap=300.0)
    assert backoff.delay(0, 30.0, rand=lambda: 0.0) == 30.0
    assert backoff.delay(0, 30.0, rand=lambda: 0.5) == 30.5  # jitter on top of Retry-After
    assert backoff.delay(6, 3.0, rand=lambda: 0.0) == 32.0  # backoff larger than Retry-After
    limited = Backoff(attempts=4, base=0.5, cap=30.0, max_retry_after=10.0)
    rng = random.Random(7)
    waits = [limited.delay(0, 3.0, rand=rng.random), limited.delay(1, 60.0, rand=rng.random), limited.delay(6, 1.0, rand=rng.random)]
    assert waits == [3.075424586962251, 10.036218143333771, 23.221074523056632]


def test_retry_after_as_seconds_or_http_date():
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None


def test_attempts_count_the_first_try_and_the_last_failure_is_raised():
    sleeps: list[float] = []
    last = TryAgain("still busy")
    work, calls = failing(10, last)
    with pytest.raises(TryAgain) as err:
        retry_call(work, Backoff(3, 1.0, 30.0), what="x", rand=lambda: 1.0, sleep=sleeps.append)
    assert err.value is last
    assert (len(calls), sleeps) == (3, [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 1"):
        Backoff(0, 1.0, 30.0)


def test_a_failure_not_worth_retrying_is_raised_at_once():
    sleeps: list[float] = []
    work, calls = failing(1, KeyError("no"))
    with pytest.raises(KeyError):
        retry_call(work, Backoff(6, 1.0, 30.0), what="x", sleep=sleeps.append)
    assert (len(calls), sleeps) == (1, [])
    work, calls = failing(2, OSError("dropped"))
    assert retry_call(work, Backoff(6, 1.0, 30.0), what="x", retry_on=lambda e: isinstance(e, OSError),
                      rand=lambda: 0.0, sleep=sleeps.append) == "done"
    assert (len(calls), sleeps) == (3, [0.5, 1.0])


def test_on_retry_sees_each_wait_and_may_give_up(caplog):
    seen: list[tuple[str, float]] = []
    work, _ = failing(2, TryAgain("http_503", 503))
    with caplog.at_level(logging.WARNING, logger="ti_pipeline.test"):
        retry_call(work, Backoff(6, 1.0, 30.0), what="GET /x", on_retry=lambda e, d: seen.append((str(e), d)),
                   logger=logging.getLogger("ti_pipeline.test"), rand=lambda: 1.0, sleep=lambda s: None)
    assert seen == [("http_503", 1.0), ("http_503", 2.0)]
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("ti_pipeline.test", logging.WARNING, "GET /x failed (http_503); retry 1 of 5 in 1.0s"),
        ("ti_pipeline.test", logging.WARNING, "GET /x failed (http_503); retry 2 of 5 in 2.0s"),
    ]

    def give_up(failure: Exception, delay: float) -> None:
        raise RuntimeError(f"would wait {delay}s")

    work, calls = failing(5, TryAgain("busy", 429, retry_after=7200.0))
    with pytest.raises(RuntimeError, match="would wait 7200.0s"):
        retry_call(work, Backoff(6, 1.0, 30.0), what="x", on_retry=give_up, rand=lambda: 0.0, sleep=lambda s: None)
    assert len(calls) == 1


def test_the_async_loop_retries_the_same_way():
    attempts: list[int] = []
    seen: list[float] = []

    async def work() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise TryAgain("http_429", 429, retry_after=0.001)
        return "done"

    backoff = Backoff(4, 0.001, 0.002)
    result = asyncio.run(retry_call_async(work, backoff, what="x", on_retry=lambda e, d: seen.append(d), rand=lambda: 0.0))
    assert (result, len(attempts)) == ("done", 3)
    assert seen == [0.001, 0.001]  # the larger of the backoff (0.0005, 0.001) and Retry-After, no spread at u = 0

    async def never() -> str:
        raise TryAgain("timeout", 0)

    with pytest.raises(TryAgain, match="timeout"):
        asyncio.run(retry_call_async(never, backoff, what="x", rand=lambda: 0.0))


def test_every_retry_loop_has_its_policy_here():
    """The five retry loops and what they were before one policy: tries, base, cap (and Retry-After limit)."""
    from ti_pipeline.core.warehouse import WRITE_RETRIES
    from ti_pipeline.threat_actors.client import MalpediaClient
    from ti_pipeline.vt_feed.broccoli.client import RetryPolicy
    from ti_pipeline.vt_feed.load.base import STATEMENT_RETRIES
    from ti_pipeline.vt_feed.package import READ_RETRIES

    assert WRITE_RETRIES == Backoff(attempts=6, base=0.5, cap=30.0)
    assert STATEMENT_RETRIES == Backoff(attempts=6, base=0.2, cap=30.0)
    assert READ_RETRIES == Backoff(attempts=4, base=2.0, cap=30.0)  # shortest waits 1, 2, 4 s as before
    assert RetryPolicy().backoff == Backoff(attempts=6, base=0.25, cap=30.0, max_retry_after=120.0)
    assert MalpediaClient().backoff == Backoff(attempts=6, base=1.0, cap=300.0)
    assert MalpediaClient(max_retries=2, backoff_base=0.01).backoff == Backoff(attempts=3, base=0.01, cap=300.0)
