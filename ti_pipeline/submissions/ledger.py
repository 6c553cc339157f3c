"""The submission ledger and the writes of one submission: what the warehouse knows of each submission
(seen, skipped, an earlier duplicate), and its rows, rejects and ledger entry, ledger entry last so a run
killed half-way redoes that submission and ends in the same tables."""

from datetime import UTC, datetime

import sqlalchemy as sa

from ti_pipeline.core import schema
from ti_pipeline.core.accounting import QuarantineRecord
from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.submissions import lake
from ti_pipeline.submissions.process import (
    ERROR,
    SUCCESS,
    Outcome,
    error,
    ledger_entry,
    ledger_id_of,
    process_submission,
)


def ledger_skips(warehouse: Warehouse) -> dict[str, bool]:
    """Every ledgered submission id and whether it is marked skip."""
    t = schema.submission_ledger
    with warehouse.engine.connect() as conn:
        return {sid: bool(skip) for sid, skip in conn.execute(sa.select(t.c.submission_id, t.c.skip))}


def duplicate_finder(warehouse: Warehouse):
    """The org's latest SUCCESS if it has the same identity hash (other orgs may send the same).

    Only the latest: after a list with other content (allow X, after block X), sending the first list
    again is the org's newest word and its rows must be written again to win (latest submission wins).
    """
    t = schema.submission_ledger

    def find(org_id: str, identity: str, submission_id: str) -> str | None:
        query = (
            sa.select(t.c.submission_id, t.c.identity_hash)
            .where(t.c.org_id == org_id, t.c.state == SUCCESS, t.c.submission_id != submission_id)
            .order_by(t.c.submitted_at.desc(), t.c.submission_id.desc())
            .limit(1)
        )
        with warehouse.engine.connect() as conn:
            latest = conn.execute(query).first()
        return latest.submission_id if latest is not None and latest.identity_hash == identity else None

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


def record_outcome(warehouse: Warehouse, outcome: Outcome, source: str, asset_name: str) -> None:
    """Rows and rejects first, the ledger entry last (a re-run redoes an unledgered submission)."""
    warehouse.clear_quarantine(asset_name, outcome.submission_id)
    warehouse.upsert(schema.customer_ioc, outcome.rows, schema.MERGE_RULES[schema.customer_ioc.name])
    quarantine = list(outcome.quarantine)
    if outcome.state == ERROR:
        quarantine.append(QuarantineRecord(source=source, reason=f"submission ERROR: {outcome.reason}"))
    warehouse.add_quarantine(asset_name, outcome.submission_id, quarantine)
    warehouse.upsert(schema.submission_ledger, [ledger_entry(outcome, datetime.now(UTC).replace(tzinfo=None))])
