"""The request budget's schedule (with an injected clock: nothing waits)."""

from __future__ import annotations

import pytest

from ti_pipeline.threat_actors.budget import DEFAULT_LIMITS, RequestBudget


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_one_window_schedules_requests_beyond_the_limit_into_the_next_windows():
    budget = RequestBudget([(3, 10.0)], clock=FakeClock())
    assert [budget.reserve() for _ in range(7)] == [0, 0, 0, 10, 10, 10, 20]


def test_every_window_holds_and_the_strictest_one_decides():
    budget = RequestBudget([(2, 1.0), (3, 10.0)], clock=FakeClock())
    assert [budget.reserve() for _ in range(6)] == [0, 0, 1, 10, 10, 11]


def test_time_passing_frees_slots():
    clock = FakeClock()
    budget = RequestBudget([(2, 60.0)], clock=clock)
    assert [budget.reserve(), budget.reserve()] == [0, 0]
    clock.now = 30.0
    assert budget.reserve() == 30.0  # the first slot frees at 60
    clock.now = 200.0
    assert [budget.reserve(), budget.reserve()] == [0, 0]


def test_default_budget_is_sixty_a_minute_and_two_thousand_an_hour():
    assert DEFAULT_LIMITS == ((60, 60.0), (2000, 3600.0))
    budget = RequestBudget(clock=FakeClock())
    waits = [budget.reserve() for _ in range(2001)]
    assert waits[:60] == [0.0] * 60
    assert waits[60] == 60.0 and waits[119] == 60.0 and waits[120] == 120.0
    # 2000 requests fit in 33 full minutes plus 20 requests; the 2001st must wait for the hour.
    assert waits[1999] == 33 * 60.0
    assert waits[2000] == 3600.0


def test_a_hold_delays_every_later_request():
    clock = FakeClock()
    budget = RequestBudget([(100, 60.0)], clock=clock)
    assert budget.reserve() == 0
    budget.hold(5.0)
    assert budget.reserve() == 5.0
    clock.now = 6.0
    assert budget.reserve() == 0


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        RequestBudget([(0, 60.0)])

