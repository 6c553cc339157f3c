"""How a failed step is tried again: one ``RetryPolicy`` for every asset, and the failures it must not retry.

Every asset replaces its partition whole or merges idempotently (a re-run ends in the same rows and
objects), so a step that failed on something passing (a warehouse or object-store outage, a killed
worker, Broccoli or Malpedia still failing after the client's own retries) is tried again by Dagster
(``TI_STEP_RETRIES`` times, default 3), after 30 s, 90 s and 210 s (exponential backoff, +/- 30 s
jitter so retried steps of several runs do not start together). A failure no retry can fix (a configuration error, a warehouse whose schema is behind
the code) is raised with ``no_retry`` and fails the step at once.
"""

from dagster import Backoff, Failure, Jitter, RetryPolicy

from ti_pipeline.core import settings


def asset_retry_policy(retries: int) -> RetryPolicy | None:
    """None when retries are off: under any policy Dagster reports a failed step as "Exceeded
    max_retries", which would hide the step's own message."""
    if retries <= 0:
        return None
    return RetryPolicy(max_retries=retries, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


ASSET_RETRY_POLICY = asset_retry_policy(settings.integer("TI_STEP_RETRIES"))


def no_retry(message: str, **kwargs) -> Failure:
    """A ``Failure`` the retry policy does not retry: the same input fails the same way next time."""
    return Failure(message, allow_retries=False, **kwargs)
