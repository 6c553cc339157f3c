"""A sensor that polls the submissions lake and backs off while it is empty or failing.

Its cursor is the JSON ``PollState`` (high-water mark, failed polls, next poll time): before the next
poll time it returns a skip without listing; a poll that finds new metadata records asks for one run
of ``submissions/customer_ioc`` naming at most ``MAX_PER_RUN`` of them (the run key names exactly that
set).
"""

import hashlib
import random
import time
from datetime import UTC, datetime

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.defs.resources import ObjectStoreResource
from ti_pipeline.defs.submissions.assets import CUSTOMER_IOC_KEY, customer_ioc
from ti_pipeline.submissions.lake import META_PREFIX
from ti_pipeline.submissions.polling import PollState, select_new
from ti_pipeline.submissions.process import ledger_id_of

MAX_PER_RUN = 100


def poll(cursor: str | None, store: ObjectStore, *, now: float, uniform: float, cap: int = MAX_PER_RUN) -> SensorResult:
    """One sensor tick with the clock and the jitter passed in (tests drive them)."""
    state = PollState.from_cursor(cursor)
    if not state.due(now):
        return SensorResult(skip_reason=SkipReason(f"backing off until {_iso(state.next_poll)} "
                                                   f"after {state.failed_polls} empty or failed poll(s)"))
    try:
        listed = [(info.updated, info.name) for info in store.list(META_PREFIX)]
    except Exception as exc:  # any lake fault counts as a failed poll, retried with backoff
        later = state.after_idle(now, uniform)
        return SensorResult(
            skip_reason=SkipReason(f"listing {store.uri} failed ({type(exc).__name__}); next poll {_iso(later.next_poll)}"),
            cursor=later.to_cursor(),
        )
    new = select_new(listed, state.high_water, cap)
    if not new:
        later = state.after_idle(now, uniform)
        return SensorResult(
            skip_reason=SkipReason(f"no new submissions in {store.uri}; next poll {_iso(later.next_poll)}"),
            cursor=later.to_cursor(),
        )
    ids = [ledger_id_of(name) for _updated, name in new]
    run_key = "submissions-" + hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:24]
    request = RunRequest(
        run_key=run_key,
        run_config={"ops": {CUSTOMER_IOC_KEY.to_python_identifier(): {"config": {"submissions": ids}}}},
        asset_selection=[CUSTOMER_IOC_KEY],
        tags={"ti_pipeline/submissions": str(len(ids))},
    )
    return SensorResult(run_requests=[request], cursor=state.after_work(new[-1]).to_cursor())


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


@sensor(
    name="submissions_sensor",
    target=[customer_ioc],
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
    description="Polls TI_SUBMISSIONS_URI for new submissions; backs off min(3600, 2**n + U(0,1)) s when idle.",
)
def submissions_sensor(context: SensorEvaluationContext, submissions_lake: ObjectStoreResource) -> SensorResult:
    return poll(context.cursor, submissions_lake.get(), now=time.time(), uniform=random.random())
