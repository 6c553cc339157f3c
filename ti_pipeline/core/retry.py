"""The one retry policy: every loop that tries again (warehouse writes, VT loader statements, VT package
reads, Broccoli and Malpedia requests) runs through ``retry_call`` / ``retry_call_async`` with a ``Backoff``.

A wait is exponential with equal jitter, between half and all of ``min(cap, base * 2**retry)``: the
jitter spreads callers refused together, the lower half keeps a floor under every wait, and no wait
passes the cap. A server's ``Retry-After`` is honoured: the wait is at least what it asks (up to
``max_retry_after``), plus up to ``min(1, base)`` seconds so clients told the same moment do not come
back together. Each retry is logged through the caller's ``logging`` logger, named under
``ti_pipeline``, which Dagster captures (``python_logs.managed_python_loggers`` in dagster.yaml).

The submissions sensor's idle wait (``submissions.polling``) is a polling schedule, not a retry, and
keeps its own formula.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


def backoff_seconds(retry: int, *, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with equal jitter: between half and all of ``base * 2**retry`` (capped)."""
    ceiling = min(cap, base * 2**retry)
    return ceiling * (0.5 + rand() / 2)


@dataclass(frozen=True)
class Backoff:
    """``attempts`` tries in all, the first included; ``base`` is the ceiling of the first retry's wait,
    doubled per retry up to ``cap``; a ``Retry-After`` longer than ``max_retry_after`` is cut to it."""

    attempts: int
    base: float
    cap: float
    max_retry_after: float = math.inf

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts counts the first try, so it is at least 1: {self.attempts}")

    def delay(self, retry: int, retry_after: float | None = None, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry ``retry`` (0 = the first retry), never below ``retry_after``."""
        backoff = backoff_seconds(retry, base=self.base, cap=self.cap, rand=rand)
        if retry_after is None:
            return backoff
        return max(backoff, min(retry_after, self.max_retry_after)) + rand() * min(1.0, self.base)


class TryAgain(Exception):
    """Raised by one try that is worth repeating (an answer rather than an exception says so, as HTTP
    429/5xx): why, the HTTP status if there was an answer, and the server's ``Retry-After`` in seconds."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.status, self.retry_after = reason, status, retry_after


def _is_try_again(exc: Exception) -> bool:
    return isinstance(exc, TryAgain)


def _wait(
    backoff: Backoff,
    retry: int,
    failure: Exception,
    what: str,
    on_retry: Callable[[Exception, float], None] | None,
    describe: Callable[[Exception], str],
    logger: logging.Logger,
    level: int,
    rand: Callable[[], float],
) -> float:
    """The wait before retry ``retry``, after the hook (which may raise to give up) and the log line.

    Shared by both loops, and only reached after a failure: a first try that succeeds pays nothing.
    """
    delay = backoff.delay(retry, failure.retry_after if isinstance(failure, TryAgain) else None, rand)
    if on_retry is not None:
        on_retry(failure, delay)
    logger.log(level, "%s failed (%s); retry %d of %d in %.1fs", what, describe(failure), retry + 1, backoff.attempts - 1, delay)
    return delay


def retry_call(
    work: Callable[[], T],
    backoff: Backoff,
    *,
    what: str,
    retry_on: Callable[[Exception], bool] = _is_try_again,
    on_retry: Callable[[Exception, float], None] | None = None,
    describe: Callable[[Exception], str] = str,
    logger: logging.Logger = log,
    level: int = logging.WARNING,
    rand: Callable[[], float] = random.random,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``work()``, tried again after a failure ``retry_on`` accepts, ``backoff.attempts`` times at most.

    A failure it refuses, or the last one, is raised as it is. ``on_retry(failure, delay)`` runs before
    each wait (counting, or raising to give up early); ``describe`` words the failure for the log line.
    """
    retry = 0
    while True:
        try:
            return work()
        except Exception as exc:
            if retry + 1 >= backoff.attempts or not retry_on(exc):
                raise
            failure = exc
        sleep(_wait(backoff, retry, failure, what, on_retry, describe, logger, level, rand))
        retry += 1


async def retry_call_async(
    work: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    what: str,
    retry_on: Callable[[Exception], bool] = _is_try_again,
    on_retry: Callable[[Exception, float], None] | None = None,
    describe: Callable[[Exception], str] = str,
    logger: logging.Logger = log,
    level: int = logging.WARNING,
    rand: Callable[[], float] = random.random,
) -> T:
    """``retry_call`` for a coroutine function; the waits are ``asyncio.sleep``."""
    import asyncio  # here, not at the top: a VT pool worker imports this module and never awaits
    retry = 0
    while True:
        try:
            return await work()
        except Exception as exc:
            if retry + 1 >= backoff.attempts or not retry_on(exc):
                raise
            failure = exc
        await asyncio.sleep(_wait(backoff, retry, failure, what, on_retry, describe, logger, level, rand))
        retry += 1


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
