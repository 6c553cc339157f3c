"""VT feed lines as typed records, and the export's rules for one report.

One msgspec ``Struct`` covers both feed shapes: the v2 "allinfo" report (``sha256``, ``positives``,
``scans``, ``scan_date`` ...) and the v3 file object (``{"id", "type": "file", "attributes": {...}}``).
Only the fields the export needs are declared; msgspec skips the rest of each line without building
it, which is what keeps parsing ~10x cheaper than the bz2 decompression in front of it
(``bench/vt_export.py`` measures msgspec against orjson and ``json.loads`` on the same lines).

Values become columns through ``ti_pipeline.core.values``, the rules the Sage dump uses too: numbers are
decoded as whatever JSON type they arrive in and read by ``values.as_int``, hashes by
``values.digest_bytes``, the v2 ``scan_date`` by ``values.parse_scan_date`` and detection lists by
``values.detection_names``. A value no column can hold is one rejected line, never a failed day.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import NamedTuple

import msgspec

from ti_pipeline.core import values
from ti_pipeline.core.accounting import Accounting

# Named rules (filtered) and reasons (rejected), as they appear in the accounting. Reasons of a
# value (``invalid_number:positives``, ``out_of_range:scan_date``, ``in_future:scan_date``,
# ``value_too_long:detection_names`` ...) come from ``ti_pipeline.core.values``.
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

# A number as any JSON type: ``values.as_int`` decides what it means (as on the dump path).
Number = bool | int | float | str | None
# v3 categories of an engine that gave a verdict: what ``total`` counts (not timeouts or unsupported types).
VERDICT_CATEGORIES = frozenset({"malicious", "suspicious", "undetected", "harmless"})
TARGET_TABLE = "ioc_file_hashes"


class V2Scan(msgspec.Struct):
    detected: bool | None = None
    result: str | None = None


class V3Stats(msgspec.Struct):
    malicious: Number = None


class V3Result(msgspec.Struct):
    category: str | None = None
    result: str | None = None


class V3Attributes(msgspec.Struct):
    sha256: str | None = None
    sha1: str | None = None
    md5: str | None = None
    last_analysis_stats: V3Stats | None = None
    # Decoded only for a kept report: most lines are filtered before they need it.
    last_analysis_results: msgspec.Raw = msgspec.Raw()
    last_analysis_date: int | None = None


class Report(msgspec.Struct):
    """A line of either feed shape; which fields are set tells them apart."""

    # v2 allinfo report
    response_code: int | None = None
    sha256: str | None = None
    sha1: str | None = None
    md5: str | None = None
    positives: Number = None
    total: Number = None
    scan_date: str | None = None  # parsed only for a kept report
    scans: msgspec.Raw = msgspec.Raw()  # decoded only for a kept report; empty when absent
    # v3 file object
    id: str | None = None
    type: str | None = None
    attributes: V3Attributes | None = None


# strict=False: the other fields (response_code, v3 epoch seconds) still accept "1" or 1.0.
DECODER = msgspec.json.Decoder(Report, strict=False)
DecodeError = msgspec.DecodeError
ValidationError = msgspec.ValidationError
_V2_SCANS = msgspec.json.Decoder(dict[str, V2Scan] | None, strict=False)
_V3_RESULTS = msgspec.json.Decoder(dict[str, V3Result] | None, strict=False)

_EPOCH = datetime(1970, 1, 1)
_ONE_US = datetime(1970, 1, 1, 0, 0, 0, 1) - _EPOCH
_ERROR_PATH = re.compile(r"at `\$(?:\[\d+\])?((?:\.\w+)*)`")
_FIELD_REASONS = {
    "sha256": REJECT_INVALID_SHA256,
    "scan_date": REJECT_INVALID_SCAN_DATE,
    "last_analysis_date": REJECT_INVALID_SCAN_DATE,
    # A number that is not even a scalar (a list, an object, 1e400): what values.as_int says of it.
    "positives": "invalid_number:positives",
    "malicious": "invalid_number:positives",
    "total": "invalid_number:total",
}


class Rules(NamedTuple):
    """What the rules of a line take from the run: its clock (naive UTC; a scan more than a day after it is
    rejected) and the limits of the ``detection_names`` column. Plain values made by ``rules`` in the
    step, so a pool worker applies them without importing the schema (SQLAlchemy)."""

    now: datetime
    detection_names_chars: int
    detection_names_utf8_bytes: int | None


def rules(now: datetime) -> Rules:
    """The rules of a run whose clock is ``now``, with the column limits of ``core/schema.py``."""
    from ti_pipeline.core import schema

    limit = schema.TEXT_LIMITS[TARGET_TABLE]["detection_names"]
    return Rules(now, limit.chars, limit.utf8_bytes)


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


def _int(value: Number, field: str) -> int | None:
    """``values.int32``, with the JSON integer that nearly every line holds checked inline."""
    if type(value) is int and values.INT32_MIN <= value <= values.INT32_MAX:
        return value
    return values.int32(value, field)


def _timestamp_us(value: datetime) -> int:
    """Microseconds since the epoch of a naive UTC datetime."""
    return (value - _EPOCH) // _ONE_US


def evaluate(report: Report, acc: Accounting, rules: Rules) -> Kept | tuple[str, str]:
    """The export's rules for one decoded report: a ``Kept`` row, or (``filtered``|``rejected``, name).

    Order: VT's "not found" answer, shape, then sha256 (a report without a valid sha256 is an error
    whatever its positives), then the filters; the rest (ranges, scan date, detections) is read only
    for a report that is kept. A scan more than a day after ``rules.now`` (the run's clock) is rejected. An invalid sha1 or md5 does not lose the report: the column is left empty and
    counted in ``acc.figures``.
    """
    attributes = report.attributes
    if attributes is not None:
        if report.type not in (None, "file"):
            return ("rejected", REJECT_UNKNOWN_SHAPE)
        return _evaluate_v3(report, attributes, acc, rules)
    if report.response_code == 0:
        return ("filtered", FILTER_NOT_FOUND)
    if report.sha256 is None and not report.scans and report.positives is None:
        return ("rejected", REJECT_MISSING_SHA256 if report.response_code is not None else REJECT_UNKNOWN_SHAPE)
    if report.sha256 is None:
        return ("rejected", REJECT_MISSING_SHA256)
    sha256 = values.digest_bytes(report.sha256, "sha256")
    if sha256 is None:
        return ("rejected", REJECT_INVALID_SHA256)
    try:
        positives = _int(report.positives, "positives")
        if not positives or positives < 0:
            return ("filtered", FILTER_POSITIVES_ZERO)
        total = _int(report.total, "total")
        scan_date = values.parse_scan_date(report.scan_date, rules.now)
    except values.InvalidValue as exc:
        return ("rejected", exc.reason)
    if scan_date is None:
        return ("rejected", REJECT_MISSING_SCAN_DATE)
    scans = _engines(_V2_SCANS, report.scans)
    if type(scans) is str:
        return ("rejected", scans)
    names = values.detection_names([(engine, scan.result) for engine, scan in scans.items() if scan.detected])
    return _kept(sha256, report.sha1, report.md5, positives, total, scan_date, names, acc, rules)


def _engines(decoder: msgspec.json.Decoder, raw: msgspec.Raw) -> dict | str:
    """A report's per-engine results, decoded only for a kept report ({} when absent), or the reason
    the line is rejected."""
    try:
        return (decoder.decode(raw) if raw else None) or {}
    except msgspec.ValidationError:
        return REJECT_INVALID_FIELD_TYPE
    except msgspec.DecodeError:  # not UTF-8, as anywhere else in the line
        return REJECT_MALFORMED_JSON


def _evaluate_v3(report: Report, attributes: V3Attributes, acc: Accounting, rules: Rules) -> Kept | tuple[str, str]:
    text = attributes.sha256 if attributes.sha256 is not None else report.id
    if text is None:
        return ("rejected", REJECT_MISSING_SHA256)
    sha256 = values.digest_bytes(text, "sha256")
    if sha256 is None:
        return ("rejected", REJECT_INVALID_SHA256)
    stats = attributes.last_analysis_stats
    try:
        positives = _int(stats.malicious, "positives") if stats is not None else None
        if not positives or positives < 0:
            return ("filtered", FILTER_POSITIVES_ZERO)
        if not attributes.last_analysis_date:  # absent, or 0: never analysed, as the dump reads an epoch of 0
            return ("rejected", REJECT_MISSING_SCAN_DATE)
        scan_date = values.from_epoch_seconds(attributes.last_analysis_date, "scan_date", rules.now)
    except values.InvalidValue as exc:
        return ("rejected", exc.reason)
    results = _engines(_V3_RESULTS, attributes.last_analysis_results)
    if type(results) is str:
        return ("rejected", results)
    total = sum(1 for r in results.values() if r.category in VERDICT_CATEGORIES)
    names = values.detection_names([(engine, r.result) for engine, r in results.items() if r.category == "malicious"])
    return _kept(sha256, attributes.sha1, attributes.md5, positives, total or None, scan_date, names, acc, rules)


def _kept(
    sha256: bytes, sha1: str | None, md5: str | None, positives: int, total: int | None,
    scan_date: datetime, names: str | None, acc: Accounting, rules: Rules,
) -> Kept | tuple[str, str]:
    if names is not None and values.too_long(names, rules.detection_names_chars, rules.detection_names_utf8_bytes):
        return ("rejected", values.too_long_reason("detection_names"))
    return Kept(
        sha256,
        _optional_digest(sha1, "sha1", acc),
        _optional_digest(md5, "md5", acc),
        positives,
        total,
        _timestamp_us(scan_date),
        names,
    )


def _optional_digest(value: str | None, kind: str, acc: Accounting) -> bytes | None:
    if value is None:
        return None
    raw = values.digest_bytes(value, kind)
    if raw is None:
        acc.figures[f"invalid_{kind}_left_empty"] += 1
    return raw
