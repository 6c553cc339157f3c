"""Payload parsers, registered by typetag, that turn a decrypted payload into customer IOC records.

Each parser has two steps: ``load`` turns the payload text into data (the value the identity hash is
computed on; a payload it cannot read raises MalformedPayload and fails the whole submission) and
``records`` yields one record per candidate value: an IocRow, or a RowRejected with its reason, or a
RowFiltered with the rule that set it aside. Values are normalised here (lower-case hex, IDNA
domains, canonical IPs); a bad value rejects that record only.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ti_pipeline import keys
from ti_pipeline.submissions.identity import MAX_DEPTH, TooDeep, depth

IOC_TYPES = ("md5", "sha1", "sha256", "domain", "ip")
ACTIONS = ("BLOCK", "ALLOW")
# A raw value longer than this is not worth normalising (the longest valid one, a domain, is 253).
MAX_RAW_VALUE_CHARS = 1024
MAX_COMMENT_CHARS = 4096


class MalformedPayload(ValueError):
    """The payload as a whole cannot be read by its parser; the message never quotes the payload."""


@dataclass(frozen=True)
class IocRow:
    ioc_type: str
    value: str
    action: str
    comment: str | None


@dataclass(frozen=True)
class RowRejected:
    reason: str


@dataclass(frozen=True)
class RowFiltered:
    rule: str


Record = IocRow | RowRejected | RowFiltered


@dataclass(frozen=True)
class Parser:
    typetag: str
    load: Callable[[str], object]
    records: Callable[[object], Iterator[Record]]
    description: str


# Input type names (CSV, MISP) -> the ioc_type stored.
_TYPE_ALIASES = {
    "md5": "md5",
    "sha1": "sha1",
    "sha-1": "sha1",
    "sha256": "sha256",
    "sha-256": "sha256",
    "domain": "domain",
    "domain-name": "domain",
    "hostname": "domain",
    "ip": "ip",
    "ipv4": "ip",
    "ipv6": "ip",
    "ip-src": "ip",
    "ip-dst": "ip",
}


def normalise_value(ioc_type: str, value: object) -> str | RowRejected:
    """The canonical text of ``value`` as an ``ioc_type`` (one of IOC_TYPES), or why it is not one."""
    if not isinstance(value, str) or not value.strip():
        return RowRejected(f"empty or non-text {ioc_type} value")
    if len(value) > MAX_RAW_VALUE_CHARS:
        return RowRejected(f"{ioc_type} value longer than {MAX_RAW_VALUE_CHARS} characters")
    if ioc_type in ("md5", "sha1", "sha256"):
        normalised = keys.normalise_hex(value, ioc_type)
    elif ioc_type == "domain":
        normalised = keys.normalise_domain(value)
    else:
        if "/" in value:
            return RowRejected("ip value is a CIDR range, not a single address")
        normalised = keys.normalise_ip(value)
    return normalised if normalised is not None else RowRejected(f"invalid {ioc_type} value")


def make_row(ioc_type: str, value: object, action: object, comment: object) -> Record:
    """One validated record, or the first reason it cannot be one."""
    normalised = normalise_value(ioc_type, value)
    if isinstance(normalised, RowRejected):
        return normalised
    if action is None or (isinstance(action, str) and not action.strip()):
        action_name = "BLOCK"
    elif isinstance(action, str) and action.strip().upper() in ACTIONS:
        action_name = action.strip().upper()
    else:
        return RowRejected("action is neither block nor allow")
    if comment is not None and not isinstance(comment, str):
        return RowRejected("comment is not text")
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        return RowRejected(f"comment longer than {MAX_COMMENT_CHARS} characters")
    return IocRow(ioc_type, normalised, action_name, comment or None)


def load_json(text: str) -> object:
    """JSON with bounded nesting: deep documents fail cleanly instead of exhausting the stack."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise MalformedPayload(f"payload nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:  # the message gives a position, never content
        raise MalformedPayload(f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    try:
        depth(data)
    except TooDeep as exc:
        raise MalformedPayload(str(exc)) from None
    return data


# ---- ioc_csv: a header row naming type and value (action, comment optional), then one IOC a row.


def load_ioc_csv(text: str) -> dict:
    """Header and rows; a row that matches the header becomes a dict (column order is not content)."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    try:
        lines = [row for row in reader if "".join(row).strip()]
    except csv.Error as exc:
        raise MalformedPayload(f"malformed CSV at line {reader.line_num}: {exc}") from None
    if not lines:
        raise MalformedPayload("CSV payload has no header row")
    header = [name.strip().lower() for name in lines[0]]
    if "type" not in header or "value" not in header:
        raise MalformedPayload("CSV header must name the columns type and value (action, comment optional)")
    if len(set(header)) != len(header):
        raise MalformedPayload("CSV header repeats a column name")
    rows = [dict(zip(header, fields, strict=True)) if len(fields) == len(header) else fields for fields in lines[1:]]
    return {"header": header, "rows": rows}


def ioc_csv_records(data: object) -> Iterator[Record]:
    assert isinstance(data, dict)
    header: list[str] = data["header"]
    for row in data["rows"]:
        if isinstance(row, list):
            yield RowRejected(f"row has {len(row)} fields, the header has {len(header)}")
            continue
        ioc_type = _TYPE_ALIASES.get(row["type"].strip().lower())
        if ioc_type is None:
            yield RowRejected("unknown ioc type")
            continue
        yield make_row(ioc_type, row["value"], row.get("action"), row.get("comment"))


# ---- stix2_bundle: STIX 2.1 indicators whose pattern compares file hashes, domain names or IPs.

_COMPARISON = re.compile(r"([a-z0-9-]+):([A-Za-z0-9_.'-]+)\s*=\s*'((?:[^'\\]|\\.)*)'")
_PATTERN_GLUE = re.compile(r"[\s\[\]()]*(?:OR[\s\[\]()]*)*")
_STIX_HASHES = {"MD5": "md5", "SHA1": "sha1", "SHA256": "sha256"}


def load_stix2_bundle(text: str) -> dict:
    data = load_json(text)
    if not isinstance(data, dict) or data.get("type") != "bundle" or not isinstance(data.get("objects"), list):
        raise MalformedPayload("not a STIX 2 bundle (an object with type 'bundle' and an objects list)")
    return data


def _stix_path_type(object_type: str, path: str) -> str | None:
    if object_type == "file" and path.startswith("hashes."):
        return _STIX_HASHES.get(path[len("hashes.") :].strip("'").upper().replace("-", ""))
    if path != "value":
        return None
    return {"domain-name": "domain", "ipv4-addr": "ip", "ipv6-addr": "ip"}.get(object_type)


def stix2_records(data: object) -> Iterator[Record]:
    assert isinstance(data, dict)
    for obj in data["objects"]:
        if not isinstance(obj, dict):
            yield RowRejected("STIX object is not a JSON object")
            continue
        if obj.get("type") != "indicator":
            yield RowFiltered("stix_not_indicator")
            continue
        if obj.get("revoked") is True:
            yield RowFiltered("stix_revoked")
            continue
        pattern = obj.get("pattern")
        if obj.get("pattern_type", "stix") != "stix" or not isinstance(pattern, str):
            yield RowRejected("indicator has no STIX pattern")
            continue
        comparisons = _COMPARISON.findall(pattern)
        if not comparisons or not _PATTERN_GLUE.fullmatch(_COMPARISON.sub("", pattern)):
            yield RowRejected("unsupported STIX pattern (only = comparisons joined by OR)")
            continue
        types = obj.get("indicator_types")
        action = "ALLOW" if isinstance(types, list) and "benign" in types else "BLOCK"
        comment = obj.get("name") if isinstance(obj.get("name"), str) else obj.get("description")
        for object_type, path, literal in comparisons:
            ioc_type = _stix_path_type(object_type, path)
            if ioc_type is None:
                yield RowRejected("unsupported STIX object path")
                continue
            yield make_row(ioc_type, literal.replace("\\'", "'").replace("\\\\", "\\"), action, comment)


# ---- misp_event: attributes of a MISP event (and of its objects) of the supported types.

_MISP_TYPES = {"md5", "sha1", "sha256", "domain", "hostname", "ip-src", "ip-dst"}
ALLOW_TAG = "allowlist"


def load_misp_event(text: str) -> dict:
    data = load_json(text)
    event = data.get("Event") if isinstance(data, dict) else None
    if not isinstance(event, dict):
        raise MalformedPayload("not a MISP event (an object with an Event object)")
    if not isinstance(event.get("Attribute", []), list) or not isinstance(event.get("Object", []), list):
        raise MalformedPayload("MISP event Attribute and Object must be lists")
    return data


def _tagged_allow(item: dict) -> bool:
    tags = item.get("Tag")
    return isinstance(tags, list) and any(isinstance(t, dict) and t.get("name") == ALLOW_TAG for t in tags)


def _misp_attributes(event: dict) -> Iterator[object]:
    yield from event.get("Attribute", [])
    for obj in event.get("Object", []):
        attributes = obj.get("Attribute") if isinstance(obj, dict) else None
        if isinstance(attributes, list):
            yield from attributes
        else:
            yield RowRejected("MISP object without an Attribute list")


def misp_records(data: object) -> Iterator[Record]:
    assert isinstance(data, dict)
    event = data["Event"]
    event_allows = _tagged_allow(event)
    info = event.get("info") if isinstance(event.get("info"), str) else None
    for attribute in _misp_attributes(event):
        if isinstance(attribute, RowRejected):
            yield attribute
            continue
        if not isinstance(attribute, dict):
            yield RowRejected("MISP attribute is not a JSON object")
            continue
        if attribute.get("deleted") is True:
            yield RowFiltered("misp_deleted")
            continue
        misp_type = attribute.get("type")
        if misp_type not in _MISP_TYPES:
            yield RowFiltered("misp_unsupported_type")
            continue
        action = "ALLOW" if event_allows or _tagged_allow(attribute) else "BLOCK"
        comment = attribute.get("comment") or info
        yield make_row(_TYPE_ALIASES[misp_type], attribute.get("value"), action, comment)


PARSERS: dict[str, Parser] = {
    p.typetag: p
    for p in (
        Parser("ioc_csv", load_ioc_csv, ioc_csv_records, "CSV with a header row: type, value, action, comment"),
        Parser("stix2_bundle", load_stix2_bundle, stix2_records, "STIX 2.1 bundle of indicators"),
        Parser("misp_event", load_misp_event, misp_records, "MISP event JSON"),
    )
}
