"""One submission from blob to ledger entry and customer_ioc rows, as a pure function.

Every submission ends in exactly one state: SUCCESS (parsed; rows may still be rejected one by one),
NOT_SUPPORTED (no parser for its typetag) or ERROR (metadata, size, decryption or payload failure).
Reasons are our own sentences: they never quote the key, the session key or the payload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from Crypto.PublicKey import RSA

from ti_pipeline.core.accounting import Accounting, QuarantineRecord
from ti_pipeline.submissions import crypto
from ti_pipeline.submissions.identity import TooDeep, identity_hash
from ti_pipeline.submissions.lake import MAX_PAYLOAD_BYTES, SubmissionMeta
from ti_pipeline.submissions.parsers import (
    PARSERS,
    IocRow,
    MalformedPayload,
    Parser,
    RowFiltered,
    RowRejected,
)

SUCCESS, NOT_SUPPORTED, ERROR = "SUCCESS", "NOT_SUPPORTED", "ERROR"

# (org, identity hash, this submission's id) -> id of an earlier SUCCESS with the same content, or None.
FindDuplicate = Callable[[str, str, str], str | None]


@dataclass
class Outcome:
    submission_id: str
    state: str
    reason: str | None = None
    # Short class of the failure for counting: metadata, too_large, blob_missing, decrypt, payload.
    error_kind: str | None = None
    org_id: str | None = None
    typetag: str | None = None
    identity_hash: str | None = None
    submitted_at: datetime | None = None
    duplicate_of: str | None = None
    rows: list[dict] = field(default_factory=list)
    accounting: Accounting = field(default_factory=Accounting)
    quarantine: list[QuarantineRecord] = field(default_factory=list)

    @property
    def skip(self) -> bool:
        """Non-SUCCESS entries are not retried unless a run forces it."""
        return self.state != SUCCESS


def error(submission_id: str, kind: str, reason: str, meta: SubmissionMeta | None = None) -> Outcome:
    return Outcome(
        submission_id,
        ERROR,
        reason=reason,
        error_kind=kind,
        org_id=meta.org_id if meta else None,
        typetag=meta.typetag if meta else None,
        submitted_at=meta.submitted_at if meta else None,
    )


def process_submission(
    meta: SubmissionMeta,
    blob: bytes,
    private_key: RSA.RsaKey,
    *,
    source: str,
    find_duplicate: FindDuplicate,
    parsers: dict[str, Parser] = PARSERS,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> Outcome:
    """Decrypt, identify and parse one submission. ``source`` names the blob in quarantine records."""
    sid = meta.submission_id
    if len(blob) > max_payload_bytes:
        return error(sid, "too_large", f"blob of {len(blob)} bytes exceeds the {max_payload_bytes}-byte cap", meta)
    try:
        plaintext = crypto.decrypt(blob, private_key)
    except crypto.DecryptError as exc:
        return error(sid, "decrypt", str(exc), meta)
    try:
        text = plaintext.decode("utf-8-sig")  # a byte order mark (Windows exports) is not content
    except UnicodeDecodeError:
        return error(sid, "payload", "payload is not UTF-8 text", meta)
    parser = parsers.get(meta.typetag)
    if parser is None:
        return Outcome(
            sid,
            NOT_SUPPORTED,
            reason=f"no parser for typetag {meta.typetag!r} (supported: {', '.join(sorted(parsers))})",
            org_id=meta.org_id,
            typetag=meta.typetag,
            identity_hash=identity_hash(meta.typetag, text),  # of the text: there is no parser to read it
            submitted_at=meta.submitted_at,
        )
    try:
        data = parser.load(text)
        identity = identity_hash(meta.typetag, data)
    except (MalformedPayload, TooDeep) as exc:
        return error(sid, "payload", str(exc), meta)
    except (RecursionError, ValueError, TypeError) as exc:  # never str(exc): it could quote the payload
        return error(sid, "payload", f"{meta.typetag} payload could not be read ({type(exc).__name__})", meta)
    outcome = Outcome(
        sid, SUCCESS, org_id=meta.org_id, typetag=meta.typetag, identity_hash=identity, submitted_at=meta.submitted_at
    )
    earlier = find_duplicate(meta.org_id, identity, sid)
    if earlier is not None:
        outcome.duplicate_of = earlier
        outcome.reason = f"duplicate of {earlier}: same content, rows not written again"
        return outcome
    try:
        _collect_rows(outcome, parser, data, meta, source)
    except (RecursionError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return error(sid, "payload", f"{meta.typetag} payload could not be parsed ({type(exc).__name__})", meta)
    return outcome


def _collect_rows(outcome: Outcome, parser: Parser, data: object, meta: SubmissionMeta, source: str) -> None:
    """Records into rows (the last of a repeated org/type/value wins), rejects into quarantine."""
    acc = Accounting()
    quarantine: list[QuarantineRecord] = []
    rows: dict[tuple[str, str], dict] = {}
    for index, record in enumerate(parser.records(data)):
        acc.read += 1
        if isinstance(record, IocRow):
            key = (record.ioc_type, record.value)
            if key in rows:
                acc.filter("repeated_in_submission")
            rows[key] = {
                "org_id": meta.org_id,
                "ioc_type": record.ioc_type,
                "value": record.value,
                "action": record.action,
                "comment": record.comment,
                "submission_id": meta.submission_id,
                "submitted_at": meta.submitted_at,
            }
        elif isinstance(record, RowRejected):
            acc.reject(record.reason)
            # Record index only: the decrypted value stays out of the quarantine table.
            quarantine.append(QuarantineRecord(source=source, reason=record.reason, offset=index))
        elif isinstance(record, RowFiltered):
            acc.filter(record.rule)
    acc.written = len(rows)
    outcome.rows = list(rows.values())
    outcome.accounting = acc
    outcome.quarantine = quarantine


def ledger_entry(outcome: Outcome, processed_at: datetime) -> dict:
    """The submission_ledger row of an outcome (no payload, no key material: ids, counts, reasons)."""
    return {
        "submission_id": outcome.submission_id,
        "org_id": outcome.org_id,
        "typetag": outcome.typetag,
        "identity_hash": outcome.identity_hash,
        "state": outcome.state,
        "reason": outcome.reason,
        "skip": outcome.skip,
        "rows_written": len(outcome.rows),
        "submitted_at": outcome.submitted_at,
        "processed_at": processed_at,
    }


def ledger_id_of(object_name: str) -> str:
    """The ledger key of a metadata object: its submission id, or a stable stand-in for a bad name."""
    from hashlib import sha256

    from ti_pipeline.submissions.lake import submission_id_of

    return submission_id_of(object_name) or f"badname-{sha256(object_name.encode()).hexdigest()[:40]}"


@dataclass(frozen=True)
class Selection:
    to_process: list[str]  # metadata object names, oldest first
    already_in_ledger: int
    requested_missing: list[str]
    left_for_later: int


def select_pending(
    listed: list[tuple[float, str]],
    ledger: dict[str, bool],
    *,
    requested: list[str],
    force: bool,
    cap: int,
) -> Selection:
    """Which listed metadata objects (updated, name) a run processes.

    Not yet in the ledger: always. In the ledger: only when forced, and then a listed submission
    whatever its state, otherwise those marked skip (NOT_SUPPORTED, ERROR). ``requested`` (ledger ids)
    narrows the run to those submissions; at most ``cap`` are taken, the rest are left for later.
    """
    wanted = set(requested)
    chosen, in_ledger = [], 0
    seen_ids = set()
    for _updated, name in sorted(listed):
        sid = ledger_id_of(name)
        if wanted and sid not in wanted:
            continue
        seen_ids.add(sid)
        if sid in ledger and not (force and (wanted or ledger[sid])):
            in_ledger += 1
            continue
        chosen.append(name)
    missing = sorted(wanted - seen_ids)
    return Selection(chosen[:cap], in_ledger, missing, max(0, len(chosen) - cap))
