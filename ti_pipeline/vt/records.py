"""VT feed lines as typed records, and the export's rules for one report.

One msgspec ``Struct`` covers both feed shapes: the v2 "allinfo" report (``sha256``, ``positives``,
``scans``, ``scan_date`` ...) and the v3 file object (``{"id", "type": "file", "attributes": {...}}``).
Only the fields the export needs are declared; msgspec skips the rest of each line without building
it, which is what keeps parsing ~10x cheaper than the bz2 decompression in front of it
(``bench/vt_export.py`` measures msgspec against orjson and ``json.loads`` on the same lines).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec

from ti_pipeline.accounting import Accounting

# Named rules (filtered) and reasons (rejected), as they appear in the accounting.
FILTER_NOT_FOUND = "not_found"  # v2 response_code 0: VT had no report for the hash
FILTER_POSITIVES_ZERO = "positives_zero"
FILTER_SUPERSEDED = "superseded_by_newer_scan"  # dedup: a newer scan of the same sha256 that day
REJECT_MALFORMED_JSON = "malformed_json"
REJECT_INVALID_FIELD_TYPE = "invalid_field_type"
REJECT_UNKNOWN_SHAPE = "unknown_shape"
REJECT_MISSING_SHA256 = "missing_sha256"
REJECT_INVALID_SHA256 = "invalid_sha256"
REJECT_MISSING_SCAN_DATE = "missing_scan_date"
REJECT_INVALID_SCAN_DATE = "invalid_scan_date"
REJECT_LINE_TOO_LONG = "line_too_long"
REJECT_CORRUPT_PACKAGE = "corrupt_package"


class V2Scan(msgspec.Struct):
    detected: bool | None = None
    result: str | None = None


class V3Stats(msgspec.Struct):
    malicious: int | None = None


class V3Result(msgspec.Struct):
    category: str | None = None
    result: str | None = None


class V3Attributes(msgspec.Struct):
    sha256: str | None = None
    sha1: str | None = None
    md5: str | None = None
    last_analysis_stats: V3Stats | None = None
    # Decoded only for a kept report (see ``_engines``): most lines are filtered before they need it.
    last_analysis_results: msgspec.Raw = msgspec.Raw()
    last_analysis_date: int | None = None


class Report(msgspec.Struct):
    """A line of either feed shape; which fields are set tells them apart."""

    # v2 allinfo report
    response_code: int | None = None
    sha256: str | None = None
    sha1: str | None = None
    md5: str | None = None
    positives: int | None = None
    total: int | None = None
    scan_date: datetime | None = None
    scans: msgspec.Raw = msgspec.Raw()  # decoded only for a kept report; empty when absent
    # v3 file object
    id: str | None = None
    type: str | None = None
    attributes: V3Attributes | None = None


# strict=False: numbers written as 14.0 or "14" (seen in old records) still decode as ints.
DECODER = msgspec.json.Decoder(Report, strict=False)
DecodeError = msgspec.DecodeError
ValidationError = msgspec.ValidationError
_V2_SCANS = msgspec.json.Decoder(dict[str, V2Scan] | None, strict=False)
_V3_RESULTS = msgspec.json.Decoder(dict[str, V3Result] | None, strict=False)

_EPOCH = datetime(1970, 1, 1)
_ONE_US = datetime(1970, 1, 1, 0, 0, 0, 1) - _EPOCH
_HEX = re.compile(rb"[0-9a-f]*")
_ERROR_PATH = re.compile(r"at `\$(?:\[\d+\])?((?:\.\w+)*)`")
_FIELD_REASONS = {
    "sha256": REJECT_INVALID_SHA256,
    "scan_date": REJECT_INVALID_SCAN_DATE,
    "last_analysis_date": REJECT_INVALID_SCAN_DATE,
}


class Kept(NamedTuple):
    """One kept report, in the export's column order (hashes as raw digests)."""

    sha256: bytes
    sha1: bytes | None
    md5: bytes | None
    positives: int
    total: int | None
    scan_date_us: int
    detection_names: str | None


def validation_reason(error: msgspec.ValidationError) -> str:
    """The reject reason for a line whose JSON is fine but a field has the wrong type."""
    match = _ERROR_PATH.search(str(error))
    if match is None or not match.group(1):
        return REJECT_UNKNOWN_SHAPE  # the line is JSON but not an object
    return _FIELD_REASONS.get(match.group(1).rsplit(".", 1)[-1], REJECT_INVALID_FIELD_TYPE)


def digest(value: str | None, length: int) -> bytes | None:
    """Raw bytes of a hex digest of ``length`` hex characters (any case), or None when it is not one."""
    if value is None or len(value) != length:
        return None
    raw = value.lower().encode("ascii", "replace")
    if not _HEX.fullmatch(raw):
        return None
    return bytes.fromhex(value)


def _timestamp_us(value: datetime) -> int:
    """Microseconds since the epoch; a naive time (the v2 ``scan_date``) is UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return (value - _EPOCH) // _ONE_US


def evaluate(report: Report, acc: Accounting) -> Kept | tuple[str, str]:
    """The export's rules for one decoded report: a ``Kept`` row, or (``filtered``|``rejected``, name).

    Order: VT's "not found" answer, shape, then sha256 (a report without a valid sha256 is an error whatever its positives),
    then the filters, then the scan date (only needed for a report that is kept). An invalid sha1 or
    md5 does not lose the report: the column is left empty and counted in ``acc.figures``.
    """
    attributes = report.attributes
    if attributes is not None:
        if report.type not in (None, "file"):
            return ("rejected", REJECT_UNKNOWN_SHAPE)
        return _evaluate_v3(report, attributes, acc)
    if report.response_code == 0:
        return ("filtered", FILTER_NOT_FOUND)
    if report.sha256 is None and not report.scans and report.positives is None:
        return ("rejected", REJECT_MISSING_SHA256 if report.response_code is not None else REJECT_UNKNOWN_SHAPE)
    if report.sha256 is None:
        return ("rejected", REJECT_MISSING_SHA256)
    sha256 = digest(report.sha256, 64)
    if sha256 is None:
        return ("rejected", REJECT_INVALID_SHA256)
    positives = report.positives or 0
    if positives <= 0:
        return ("filtered", FILTER_POSITIVES_ZERO)
    if report.scan_date is None:
        return ("rejected", REJECT_MISSING_SCAN_DATE)
    try:
        scans = (_V2_SCANS.decode(report.scans) if report.scans else None) or {}
    except (msgspec.ValidationError, msgspec.DecodeError):
        return ("rejected", REJECT_INVALID_FIELD_TYPE)
    names = ";".join(
        f"{engine}:{scan.result}" if scan.result else engine for engine, scan in scans.items() if scan.detected
    )
    return Kept(
        sha256,
        _optional_digest(report.sha1, 40, "sha1", acc),
        _optional_digest(report.md5, 32, "md5", acc),
        positives,
        report.total,
        _timestamp_us(report.scan_date),
        names or None,
    )


def _evaluate_v3(report: Report, attributes: V3Attributes, acc: Accounting) -> Kept | tuple[str, str]:
    text = attributes.sha256 if attributes.sha256 is not None else report.id
    if text is None:
        return ("rejected", REJECT_MISSING_SHA256)
    sha256 = digest(text, 64)
    if sha256 is None:
        return ("rejected", REJECT_INVALID_SHA256)
    stats = attributes.last_analysis_stats
    positives = (stats.malicious if stats is not None else None) or 0
    if positives <= 0:
        return ("filtered", FILTER_POSITIVES_ZERO)
    if attributes.last_analysis_date is None:
        return ("rejected", REJECT_MISSING_SCAN_DATE)
    try:
        raw = attributes.last_analysis_results
        results = (_V3_RESULTS.decode(raw) if raw else None) or {}
    except (msgspec.ValidationError, msgspec.DecodeError):
        return ("rejected", REJECT_INVALID_FIELD_TYPE)
    names = ";".join(
        f"{engine}:{r.result}" if r.result else engine for engine, r in results.items() if r.category == "malicious"
    )
    return Kept(
        sha256,
        _optional_digest(attributes.sha1, 40, "sha1", acc),
        _optional_digest(attributes.md5, 32, "md5", acc),
        positives,
        len(results) if results else None,
        attributes.last_analysis_date * 1_000_000,
        names or None,
    )


def _optional_digest(value: str | None, length: int, kind: str, acc: Accounting) -> bytes | None:
    if value is None:
        return None
    raw = digest(value, length)
    if raw is None:
        acc.figures[f"invalid_{kind}_left_empty"] += 1
    return raw
