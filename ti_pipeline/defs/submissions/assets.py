"""Organisation submissions (Cybex-P archive) into customer_ioc, every submission in the ledger.

Dagster glue over ``ti_pipeline.submissions``: list the lake, pick what the ledger has not seen (or
what a forced run names), then decrypt, parse and record one submission at a time (memory bounded by
the payload cap; ``submissions.ledger`` writes its rows before its ledger entry).
"""

from dagster import AssetCheckSpec, AssetExecutionContext, AssetKey, Config, MaterializeResult, asset

from ti_pipeline.core import schema
from ti_pipeline.core.accounting import Accounting
from ti_pipeline.defs.metadata import (
    OWNERS,
    TABLE_KINDS,
    accounting_metadata,
    reconcile_check,
    table_asset_metadata,
)
from ti_pipeline.defs.policies import ASSET_RETRY_POLICY, no_retry
from ti_pipeline.defs.resources import ObjectStoreResource, PrivateKeyFileResource, WarehouseResource
from ti_pipeline.submissions import lake
from ti_pipeline.submissions.crypto import KeyFileError
from ti_pipeline.submissions.ledger import duplicate_finder, ledger_skips, read_submission, record_outcome
from ti_pipeline.submissions.process import (
    ERROR,
    NOT_SUPPORTED,
    SUCCESS,
    Outcome,
    select_pending,
)

# The domain's one name: package, defs module, asset group and key prefix.
DOMAIN = "submissions"
CUSTOMER_IOC_KEY = AssetKey([DOMAIN, "customer_ioc"])
# The asset as the quarantine's asset column names it.
ASSET_NAME = CUSTOMER_IOC_KEY.to_user_string()


class SubmissionsConfig(Config):
    submissions: list[str] = []
    """Ledger ids (submission ids) to process, as the sensor lists them; empty: every pending one."""
    force: bool = False
    """Reprocess ledgered submissions: the listed ones whatever their state, else those marked skip."""
    max_submissions: int = 500
    """At most this many submissions per run; the rest wait for the next run."""
    max_payload_mib: int = 16
    """Blobs larger than this end in ERROR without being read."""


def _count_submission(acc: Accounting, states: dict[str, int], outcome: Outcome) -> None:
    acc.read += 1
    states[outcome.state] += 1
    if outcome.state == SUCCESS:
        acc.written += 1
        if outcome.duplicate_of:
            acc.figures["duplicates"] += 1
    elif outcome.state == NOT_SUPPORTED:
        acc.filter("not_supported_typetag")
    else:
        acc.reject(outcome.error_kind or "error")


@asset(
    key=CUSTOMER_IOC_KEY,
    group_name=DOMAIN,
    description=(
        "Organisation blocklists/allowlists from encrypted submissions (Cybex-P archive format): "
        "decrypted, parsed by typetag, upserted per org, type and value (latest submission wins). "
        "Every submission gets one ledger state in submission_ledger: SUCCESS, NOT_SUPPORTED or ERROR."
    ),
    check_specs=[
        AssetCheckSpec("counts_reconcile", asset=CUSTOMER_IOC_KEY, description="rows read = written + filtered + rejected"),
        AssetCheckSpec(
            "submissions_reconcile",
            asset=CUSTOMER_IOC_KEY,
            description="submissions read = SUCCESS + NOT_SUPPORTED + ERROR",
        ),
    ],
    pool="warehouse_writes",
    retry_policy=ASSET_RETRY_POLICY,
    metadata={**table_asset_metadata(schema.customer_ioc), "ledger_table": schema.submission_ledger.name},
    kinds=TABLE_KINDS,
    owners=OWNERS,
)
def customer_ioc(
    context: AssetExecutionContext,
    config: SubmissionsConfig,
    warehouse: WarehouseResource,
    submissions_lake: ObjectStoreResource,
    submissions_private_key: PrivateKeyFileResource,
):
    wh = warehouse.get()
    store = submissions_lake.get()
    listed = [(info.updated, info.name) for info in store.list(lake.META_PREFIX)]
    selection = select_pending(
        listed, ledger_skips(wh), requested=config.submissions, force=config.force, cap=config.max_submissions
    )
    for sid in selection.requested_missing:
        context.log.warning(f"requested submission {sid} is not in {store.uri}")
    context.log.info(
        f"{len(listed)} submission(s) in {store.uri}: {len(selection.to_process)} to process, "
        f"{selection.already_in_ledger} already in the ledger, {selection.left_for_later} left for a later run"
    )
    key = None

    def load_key():
        nonlocal key
        if key is None:
            try:
                key = submissions_private_key.load()
            except KeyFileError as exc:
                raise no_retry(str(exc)) from None
        return key

    rows, submissions = Accounting(), Accounting()
    submissions.figures["duplicates"] = 0
    states = dict.fromkeys((SUCCESS, NOT_SUPPORTED, ERROR), 0)
    find_duplicate = duplicate_finder(wh)
    max_payload_bytes = config.max_payload_mib << 20
    for meta_object in selection.to_process:
        outcome = read_submission(store, meta_object, load_key, find_duplicate, max_payload_bytes)
        record_outcome(wh, outcome, store.url_of(meta_object), ASSET_NAME)
        rows.merge(outcome.accounting)
        _count_submission(submissions, states, outcome)
        note = f": {outcome.reason}" if outcome.reason else ""
        context.log.info(f"{outcome.submission_id} [{outcome.org_id}/{outcome.typetag}] {outcome.state}{note}, "
                         f"{len(outcome.rows)} row(s)")
    extra: dict[str, object] = {f"submissions.{k}": v for k, v in submissions.as_dict().items()}
    extra.update({f"submissions.{state}": n for state, n in states.items()})
    extra.update(
        {
            "submissions.already_in_ledger": selection.already_in_ledger,
            "submissions.left_for_later": selection.left_for_later,
            "submissions.requested_missing": len(selection.requested_missing),
            "lake": store.uri,
            "forced": config.force,
        }
    )
    yield MaterializeResult(metadata=accounting_metadata(rows, extra))
    yield reconcile_check(rows)
    yield reconcile_check(submissions, check_name="submissions_reconcile")

