"""Organisation submissions (Cybex-P archive) into customer_ioc, every submission in the ledger.

Dagster glue over ``ti_pipeline.submissions``: list the lake, pick what the ledger has not seen (or
what a forced run names), decrypt and parse one submission at a time (memory bounded by the payload
cap), upsert its rows (the latest submission of an org wins per org, type and value), then record
its ledger entry last, so a run killed half-way redoes that submission and ends in the same tables.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from dagster import AssetCheckSpec, AssetExecutionContext, Config, Failure, MaterializeResult, asset

from ti_pipeline.core import schema
from ti_pipeline.core.accounting import Accounting, QuarantineRecord
from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.core.warehouse import MergeRule, Warehouse
from ti_pipeline.defs.metadata import accounting_metadata, reconcile_check
from ti_pipeline.defs.resources import ObjectStoreResource, PrivateKeyFileResource, WarehouseResource
from ti_pipeline.submissions import lake
from ti_pipeline.submissions.crypto import KeyFileError
from ti_pipeline.submissions.process import (
    ERROR,
    NOT_SUPPORTED,
    SUCCESS,
    Outcome,
    error,
    ledger_entry,
    ledger_id_of,
    process_submission,
    select_pending,
)

GROUP = "submissions"
ASSET_NAME = "customer_ioc"
# Per org, type and value the row of the latest submission wins, whatever order runs see them in.
CUSTOMER_IOC_RULE = MergeRule(newer_column="submitted_at")


class SubmissionsConfig(Config):
    submissions: list[str] = []
    """Ledger ids (submission ids) to process, as the sensor lists them; empty: every pending one."""
    force: bool = False
    """Reprocess ledgered submissions: the listed ones whatever their state, else those marked skip."""
    max_submissions: int = 500
    """At most this many submissions per run; the rest wait for the next run."""
    max_payload_mib: int = 16
    """Blobs larger than this end in ERROR without being read."""


def ledger_skips(warehouse: Warehouse) -> dict[str, bool]:
    """Every ledgered submission id and whether it is marked skip."""
    t = schema.submission_ledger
    with warehouse.engine.connect() as conn:
        return {sid: bool(skip) for sid, skip in conn.execute(sa.select(t.c.submission_id, t.c.skip))}


def duplicate_finder(warehouse: Warehouse):
    """Earlier SUCCESS of the same org with the same identity hash (other orgs may send the same)."""
    t = schema.submission_ledger

    def find(org_id: str, identity: str, submission_id: str) -> str | None:
        query = (
            sa.select(t.c.submission_id)
            .where(
                t.c.org_id == org_id,
                t.c.identity_hash == identity,
                t.c.state == SUCCESS,
                t.c.submission_id != submission_id,
            )
            .order_by(t.c.submitted_at, t.c.submission_id)
            .limit(1)
        )
        with warehouse.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()

    return find


def read_submission(
    store: ObjectStore, meta_object: str, load_key, find_duplicate, max_payload_bytes: int
) -> Outcome:
    """One metadata object to its outcome; a fault of the lake itself (not of the submission) raises."""
    sid = lake.submission_id_of(meta_object)
    if sid is None:
        return error(ledger_id_of(meta_object), "metadata", "metadata object name is not meta/<submission id>.json")
    info = store.stat(meta_object)
    if info is None:
        return error(sid, "metadata", "metadata record vanished before it was read")
    if info.size > lake.MAX_METADATA_BYTES:
        return error(sid, "metadata", f"metadata record of {info.size} bytes exceeds {lake.MAX_METADATA_BYTES}")
    try:
        meta = lake.parse_metadata(sid, store.read_bytes(meta_object))
    except lake.InvalidMetadata as exc:
        return error(sid, "metadata", f"invalid metadata: {exc}")
    blob_info = store.stat(lake.blob_name(sid))
    if blob_info is None:
        return error(sid, "blob_missing", f"no blob {lake.blob_name(sid)} beside the metadata record", meta)
    if blob_info.size > max_payload_bytes:
        return error(sid, "too_large", f"blob of {blob_info.size} bytes exceeds the {max_payload_bytes}-byte cap", meta)
    blob = store.read_bytes(lake.blob_name(sid))
    return process_submission(
        meta,
        blob,
        load_key(),
        source=store.url_of(lake.blob_name(sid)),
        find_duplicate=find_duplicate,
        max_payload_bytes=max_payload_bytes,
    )


def record_outcome(warehouse: Warehouse, outcome: Outcome, source: str) -> None:
    """Rows and rejects first, the ledger entry last (a re-run redoes an unledgered submission)."""
    warehouse.clear_quarantine(ASSET_NAME, outcome.submission_id)
    warehouse.upsert(schema.customer_ioc, outcome.rows, CUSTOMER_IOC_RULE)
    quarantine = list(outcome.quarantine)
    if outcome.state == ERROR:
        quarantine.append(QuarantineRecord(source=source, reason=f"submission ERROR: {outcome.reason}"))
    warehouse.add_quarantine(ASSET_NAME, outcome.submission_id, quarantine)
    warehouse.upsert(schema.submission_ledger, [ledger_entry(outcome, datetime.now(UTC).replace(tzinfo=None))])


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
    name=ASSET_NAME,
    group_name=GROUP,
    description=(
        "Organisation blocklists/allowlists from encrypted submissions (Cybex-P archive format): "
        "decrypted, parsed by typetag, upserted per org, type and value (latest submission wins). "
        "Every submission gets one ledger state in submission_ledger: SUCCESS, NOT_SUPPORTED or ERROR."
    ),
    check_specs=[
        AssetCheckSpec("counts_reconcile", asset=ASSET_NAME, description="rows read = written + filtered + rejected"),
        AssetCheckSpec(
            "submissions_reconcile",
            asset=ASSET_NAME,
            description="submissions read = SUCCESS + NOT_SUPPORTED + ERROR",
        ),
    ],
    pool="warehouse_writes",
    metadata={"dagster/table_name": "customer_ioc", "ledger_table": "submission_ledger"},
    kinds={"python", "sql"},
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
                raise Failure(str(exc)) from None
        return key

    rows, submissions = Accounting(), Accounting()
    submissions.figures["duplicates"] = 0
    states = dict.fromkeys((SUCCESS, NOT_SUPPORTED, ERROR), 0)
    find_duplicate = duplicate_finder(wh)
    max_payload_bytes = config.max_payload_mib << 20
    for meta_object in selection.to_process:
        outcome = read_submission(store, meta_object, load_key, find_duplicate, max_payload_bytes)
        record_outcome(wh, outcome, store.url_of(meta_object))
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

