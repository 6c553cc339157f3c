"""The polling state of the submissions sensor, kept in its cursor, and the backoff schedule.

After ``n`` consecutive empty or failed polls the next one waits ``min(3600, 2**n + U(0,1))`` seconds
(Cybex-P's archive loop); a poll that finds work resets ``n``. New submissions are those whose
metadata record sorts after the high-water mark ``(updated time, name)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

MAX_WAIT_SECONDS = 3600.0


def backoff_seconds(failed_polls: int, uniform: float) -> float:
    """``min(3600, 2**n + u)`` with ``u`` drawn from U(0,1) by the caller (injected for tests).

    A polling schedule, not a retry: ``core.retry``'s backoff scales its jitter with the wait, which
    would not be this formula, so the schedule keeps its own.
    """
    if failed_polls <= 0:
        return 0.0
    return min(MAX_WAIT_SECONDS, 2.0 ** min(failed_polls, 12) + uniform)


@dataclass(frozen=True)
class PollState:
    high_water: tuple[float, str] | None = None
    failed_polls: int = 0
    next_poll: float = 0.0  # epoch seconds; no listing before it

    def to_cursor(self) -> str:
        return json.dumps(
            {"high_water": list(self.high_water) if self.high_water else None,
             "failed_polls": self.failed_polls, "next_poll": self.next_poll},
            sort_keys=True,
        )

    @classmethod
    def from_cursor(cls, cursor: str | None) -> PollState:
        """The state in a cursor; an absent or unreadable cursor starts afresh (everything is new)."""
        if not cursor:
            return cls()
        try:
            raw = json.loads(cursor)
            hw = raw.get("high_water")
            return cls(
                high_water=(float(hw[0]), str(hw[1])) if hw else None,
                failed_polls=int(raw.get("failed_polls", 0)),
                next_poll=float(raw.get("next_poll", 0.0)),
            )
        except (ValueError, TypeError, IndexError, AttributeError):
            return cls()

    def due(self, now: float) -> bool:
        return now >= self.next_poll

    def after_idle(self, now: float, uniform: float) -> PollState:
        """An empty or failed poll: one more failure, and the next poll pushed back."""
        failed = self.failed_polls + 1
        return PollState(self.high_water, failed, now + backoff_seconds(failed, uniform))

    def after_work(self, high_water: tuple[float, str]) -> PollState:
        """A poll that found submissions: failures reset, poll again at the next tick."""
        return PollState(high_water, 0, 0.0)


def select_new(
    objects: Iterable[tuple[float, str]], high_water: tuple[float, str] | None, cap: int
) -> list[tuple[float, str]]:
    """Up to ``cap`` (updated, name) pairs after the high-water mark, oldest first."""
    newer = sorted(o for o in objects if high_water is None or o > high_water)
    return newer[:cap]
