"""Layout of the submissions lake and the metadata record kept beside each encrypted blob.

Per submission ``<id>``: ``blobs/<id>.bin`` (the encrypted payload) and ``meta/<id>.json`` (name,
orgid, timezone, typetag, timestamp, size). The producer writes the blob first and the metadata last,
so a listed metadata record always means a complete submission. Object names are built from the
submission id only (never from metadata values), and the id is checked against a strict pattern.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from Crypto.PublicKey import RSA
from Crypto.Random import get_random_bytes

from ti_pipeline.core.objectstore import ObjectStore
from ti_pipeline.submissions import crypto
from ti_pipeline.submissions.crypto import RandFunc

META_PREFIX = "meta/"
BLOB_PREFIX = "blobs/"
META_SUFFIX = ".json"
BLOB_SUFFIX = ".bin"
MAX_METADATA_BYTES = 64 << 10
MAX_PAYLOAD_BYTES = 16 << 20

_SUBMISSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_ORG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TYPETAG = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# Epoch seconds written as text ("1730448000", "1730448000.5"), as form fields carry them.
_EPOCH_TEXT = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,9})?")


class InvalidMetadata(ValueError):
    """A metadata record that is not usable; the message names the field, not its value."""


@dataclass(frozen=True)
class SubmissionMeta:
    submission_id: str
    name: str
    org_id: str
    timezone: str
    typetag: str
    submitted_at: datetime  # naive UTC, as the warehouse stores it
    size: int | None = None


def meta_name(submission_id: str) -> str:
    return f"{META_PREFIX}{check_submission_id(submission_id)}{META_SUFFIX}"


def blob_name(submission_id: str) -> str:
    return f"{BLOB_PREFIX}{check_submission_id(submission_id)}{BLOB_SUFFIX}"


def check_submission_id(value: str) -> str:
    if not _SUBMISSION_ID.fullmatch(value):
        raise InvalidMetadata("not a submission id (1-64 letters, digits, '_' or '-')")
    return value


def submission_id_of(object_name: str) -> str | None:
    """The submission id of a metadata object name, or None when the name is not one."""
    if not (object_name.startswith(META_PREFIX) and object_name.endswith(META_SUFFIX)):
        return None
    candidate = object_name[len(META_PREFIX) : -len(META_SUFFIX)]
    return candidate if _SUBMISSION_ID.fullmatch(candidate) else None


def check_org_id(value: object) -> str:
    if not isinstance(value, str) or not _ORG_ID.fullmatch(value):
        raise InvalidMetadata("orgid is not an organisation id (1-64 letters, digits, '.', '_' or '-')")
    return value


def check_typetag(value: object) -> str:
    if not isinstance(value, str) or not _TYPETAG.fullmatch(value):
        raise InvalidMetadata("typetag is not a type tag (1-64 lower-case letters, digits, '.', '_' or '-')")
    return value


@functools.cache
def _zone_names() -> dict[str, str]:
    """IANA names by their lower case (no two differ by case only)."""
    return {name.lower(): name for name in available_timezones()}


def _zone(value: object) -> ZoneInfo:
    """An IANA zone, its name matched regardless of case and surrounding blanks (``utc``, `` UTC``)."""
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidMetadata("timezone is not an IANA time zone name")
    name = value.strip()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    try:
        return ZoneInfo(_zone_names()[name.lower()])
    except (KeyError, ZoneInfoNotFoundError, ValueError):
        raise InvalidMetadata("timezone is not an IANA time zone name") from None


def _timestamp(value: object, zone: ZoneInfo) -> datetime:
    """Epoch seconds (a number, or its text), or ISO 8601 (a naive one is read in the submission's
    timezone; ISO is tried first, so a basic date such as ``20261101`` stays a date); naive UTC out."""
    if isinstance(value, bool):
        raise InvalidMetadata("timestamp is neither epoch seconds nor ISO 8601")
    if isinstance(value, str) and len(value) <= 64:
        value = value.strip()
        if _EPOCH_TEXT.fullmatch(value):
            try:
                datetime.fromisoformat(value)
            except ValueError:
                value = float(value)
    try:
        if isinstance(value, int | float):
            moment = datetime.fromtimestamp(value, UTC)
        elif isinstance(value, str) and len(value) <= 64:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
        else:
            raise InvalidMetadata("timestamp is neither epoch seconds nor ISO 8601")
    except (ValueError, OverflowError, OSError):
        raise InvalidMetadata("timestamp is neither epoch seconds nor ISO 8601") from None
    return moment.astimezone(UTC).replace(tzinfo=None)


def parse_metadata(submission_id: str, raw: bytes) -> SubmissionMeta:
    """A validated metadata record, or InvalidMetadata naming the first bad field."""
    if len(raw) > MAX_METADATA_BYTES:
        raise InvalidMetadata(f"metadata record of {len(raw)} bytes exceeds {MAX_METADATA_BYTES}")
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidMetadata("metadata record is not JSON") from None
    if not isinstance(record, dict):
        raise InvalidMetadata("metadata record is not a JSON object")
    zone_name = record.get("timezone")
    if isinstance(zone_name, str):
        zone_name = zone_name.strip()
    zone = _zone(zone_name or "UTC")  # absent, null or blank: UTC
    name = record.get("name", submission_id)
    if not isinstance(name, str) or len(name) > 255:
        raise InvalidMetadata("name is not text of at most 255 characters")
    size = record.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidMetadata("size is not a byte count")
    return SubmissionMeta(
        submission_id=submission_id,
        name=name,
        org_id=check_org_id(record.get("orgid")),
        timezone=zone.key,
        typetag=check_typetag(record.get("typetag")),
        submitted_at=_timestamp(record.get("timestamp"), zone),
        size=size,
    )


def metadata_record(meta: SubmissionMeta) -> bytes:
    return json.dumps(
        {
            "name": meta.name,
            "orgid": meta.org_id,
            "timezone": meta.timezone,
            "typetag": meta.typetag,
            "timestamp": meta.submitted_at.replace(tzinfo=UTC).isoformat(),
            "size": meta.size,
        },
        sort_keys=True,
    ).encode()


def new_submission_id(when: datetime, randfunc: RandFunc | None = None) -> str:
    """Time-ordered and unique: ``YYYYMMDDTHHMMSSffffffZ-<16 hex>``."""
    rand = randfunc or get_random_bytes
    return f"{when.astimezone(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{rand(8).hex()}"


def write_submission(
    store: ObjectStore,
    *,
    org_id: str,
    typetag: str,
    payload: bytes,
    public_key: RSA.RsaKey,
    timezone: str = "UTC",
    name: str | None = None,
    when: datetime | None = None,
    randfunc: RandFunc | None = None,
) -> SubmissionMeta:
    """Encrypt ``payload`` for ``public_key`` and publish it: blob first, metadata record last."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte cap")
    when = when or datetime.now(UTC)
    submission_id = new_submission_id(when, randfunc)
    _zone(timezone)
    blob = crypto.encrypt(payload, public_key, randfunc)
    meta = SubmissionMeta(
        submission_id=submission_id,
        name=name or submission_id,
        org_id=check_org_id(org_id),
        timezone=timezone,
        typetag=check_typetag(typetag),
        submitted_at=when.astimezone(UTC).replace(tzinfo=None),
        size=len(blob),
    )
    store.write_bytes(blob_name(submission_id), blob)
    store.write_bytes(meta_name(submission_id), metadata_record(meta))
    return meta
