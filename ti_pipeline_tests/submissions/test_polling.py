import pytest

from ti_pipeline.submissions.polling import PollState, backoff_seconds, select_new


@pytest.mark.parametrize(
    ("n", "u", "seconds"),
    [(0, 0.9, 0.0), (1, 0.0, 2.0), (1, 0.25, 2.25), (3, 0.5, 8.5), (11, 0.999, 2048.999), (12, 0.0, 3600.0),
     (500, 0.5, 3600.0)],
)
def test_backoff_schedule(n: int, u: float, seconds: float):
    assert backoff_seconds(n, u) == seconds


def test_cursor_in_next_poll_time_out():
    state = PollState.from_cursor(None)
    assert state == PollState() and state.due(0.0)
    jitter = iter([0.5, 0.25, 0.125])
    now = 1_000.0
    for expected_failures, expected_wait in [(1, 2.5), (2, 4.25), (3, 8.125)]:
        state = PollState.from_cursor(state.after_idle(now, next(jitter)).to_cursor())
        assert (state.failed_polls, state.next_poll) == (expected_failures, now + expected_wait)
        assert not state.due(now + expected_wait - 0.001) and state.due(now + expected_wait)
        now = state.next_poll
    worked = PollState.from_cursor(state.after_work((5.0, "meta/x.json")).to_cursor())
    assert worked == PollState((5.0, "meta/x.json"), 0, 0.0)


@pytest.mark.parametrize("cursor", ["not json", "[]", '{"high_water": 5}', '{"failed_polls": "many"}'])
def test_unreadable_cursor_starts_afresh(cursor: str):
    assert PollState.from_cursor(cursor) == PollState()


def test_select_new_after_the_high_water_mark():
    objects = [(2.0, "meta/b.json"), (1.0, "meta/a.json"), (2.0, "meta/c.json"), (3.0, "meta/d.json")]
    assert select_new(objects, None, 2) == [(1.0, "meta/a.json"), (2.0, "meta/b.json")]
    assert select_new(objects, (2.0, "meta/b.json"), 10) == [(2.0, "meta/c.json"), (3.0, "meta/d.json")]
    assert select_new(objects, (3.0, "meta/d.json"), 10) == []
