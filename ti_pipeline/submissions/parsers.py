"""Payload parsers, registered by typetag, that turn a decrypted payload into customer IOC records.

Each parser has two steps: ``load`` turns the payload text into data (the value the identity hash is
computed on; a payload it cannot read raises MalformedPayload and fails the whole submission) and
``records`` yields one record per candidate value: an IocRow, or a RowRejected with its reason, or a
RowFiltered with the rule that set it aside. Values are normalised here (lower-case hex, IDNA
domains, canonical IPs, URLs with lower-case scheme and host); a bad value rejects that record only.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from antlr4 import ParserRuleContext, TerminalNode
from stix2patterns.exceptions import ParseException
from stix2patterns.v21.grammars.STIXPatternParser import STIXPatternParser as Grammar
from stix2patterns.v21.grammars.STIXPatternVisitor import STIXPatternVisitor
from stix2patterns.v21.pattern import Pattern

from ti_pipeline.core import keys, schema
from ti_pipeline.submissions.identity import MAX_DEPTH, TooDeep, depth

IOC_TYPES = ("md5", "sha1", "sha256", "domain", "ip", "url")
ACTIONS = ("BLOCK", "ALLOW")
# A raw value longer than this is not worth normalising.
MAX_RAW_VALUE_CHARS = 1024
# A normalised value must fit the customer_ioc key column (a long URL may not).
MAX_VALUE_CHARS = schema.customer_ioc.c.value.type.length
MAX_COMMENT_CHARS = 4096
# In a str from json.loads a surrogate is always unpaired (escaped pairs decode to one code point).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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
    "url": "url",
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
    elif ioc_type == "url":
        normalised = normalise_url(value)
    else:
        if "/" in value:
            return RowRejected("ip value is a CIDR range, not a single address")
        normalised = keys.normalise_ip(value)
    if normalised is None:
        return RowRejected(f"invalid {ioc_type} value")
    return normalised if len(normalised) <= MAX_VALUE_CHARS else RowRejected("value_too_long")


def normalise_url(value: str) -> str | None:
    """``scheme://host...`` with scheme and host in lower case, or None without both.

    Conservative: the host goes through the domain (IDNA) or IP normaliser and the port becomes a
    number; user info, path, query and fragment stay as written, since they may be case-sensitive.
    """
    text = value.strip()
    if any(char.isspace() or not char.isprintable() for char in text):
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:  # an unbalanced [ in the host, a port out of range
        return None
    if not (parts.scheme and parts.hostname and text[len(parts.scheme) :].startswith(f"://{parts.netloc}")):
        return None
    address = keys.normalise_ip(parts.hostname)
    if address is not None:
        host = f"[{address}]" if ":" in address else address
    else:
        host = keys.normalise_domain(parts.hostname)
        if host is None:
            return None
    user_info, at, _host_and_port = parts.netloc.rpartition("@")
    rest = text[len(parts.scheme) + 3 + len(parts.netloc) :]
    return f"{parts.scheme}://{user_info}{at}{host}{'' if port is None else f':{port}'}{rest}"


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
    if comment:  # a lone surrogate ("\ud83d" in JSON) cannot be stored: U+FFFD as UTF-8 decoders do
        comment = _LONE_SURROGATE.sub("\ufffd", comment)
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


# ---- stix2_bundle: STIX 2.1 indicators whose pattern is a list of values (equalities joined by OR).

_STIX_HASHES = {"MD5": "md5", "SHA1": "sha1", "SHA256": "sha256"}
_STIX_VALUE_OBJECTS = {"domain-name": "domain", "ipv4-addr": "ip", "ipv6-addr": "ip", "url": "url"}
# Observation expressions whose qualifier constrains when or how often values are seen.
_STIX_QUALIFIED = {
    Grammar.ObservationExpressionWithinContext: "WITHIN",
    Grammar.ObservationExpressionRepeatedContext: "REPEATS",
    Grammar.ObservationExpressionStartStopContext: "START/STOP",
}
_STIX_SET_PUNCTUATION = (Grammar.LPAREN, Grammar.RPAREN, Grammar.COMMA)
# A reason is an accounting key and quarantine text: a path named in one is cut to this length.
MAX_STIX_PATH_IN_REASON = 64


class UnsupportedPattern(Exception):
    """A valid pattern that a list of values cannot express exactly; the message names the construct."""


class _ParseTreeRoot(STIXPatternVisitor):
    """Hands back the root of a parsed pattern: the walk below is iterative, as chains of OR nest as
    deep as they are long (a thousand hashes would exhaust the stack of a recursive visitor)."""

    def visitPattern(self, ctx: Grammar.PatternContext) -> Grammar.PatternContext:
        return ctx


def load_stix2_bundle(text: str) -> dict:
    data = load_json(text)
    if not isinstance(data, dict) or data.get("type") != "bundle" or not isinstance(data.get("objects"), list):
        raise MalformedPayload("not a STIX 2 bundle (an object with type 'bundle' and an objects list)")
    return data


def _tokens(ctx: ParserRuleContext) -> list[TerminalNode]:
    """The tokens under ``ctx`` in pattern order, without recursion (long sets nest deep)."""
    found, stack = [], [ctx]
    while stack:
        node = stack.pop()
        if isinstance(node, TerminalNode):
            found.append(node)
        else:
            stack.extend(reversed(list(node.getChildren())))
    return found


def _string_literal(text: str) -> str:
    """The value of a quoted STIX string literal, whose only escapes are \\' and \\\\."""
    chars = iter(text[1:-1])
    return "".join(next(chars, "") if char == "\\" else char for char in chars)


def _stix_path_ioc_type(path: Grammar.ObjectPathContext) -> str:
    """The ioc type an object path holds, for a hash of a file or the value of a name, address or URL."""
    tokens = _tokens(path)  # object type, ':', first property, then '.' key or '[' index ']' steps
    object_type = tokens[0].getText()
    steps = [
        _string_literal(t.getText()) if t.symbol.type == Grammar.StringLiteral else t.getText() for t in tokens[2:]
    ]
    if object_type == "file" and len(steps) == 3 and steps[:2] == ["hashes", "."]:
        ioc_type = _STIX_HASHES.get(steps[2].upper().replace("-", ""))
    else:
        ioc_type = _STIX_VALUE_OBJECTS.get(object_type) if steps == ["value"] else None
    if ioc_type is None:
        shown = "".join(t.getText() for t in tokens)
        if len(shown) > MAX_STIX_PATH_IN_REASON:
            shown = shown[: MAX_STIX_PATH_IN_REASON - 3] + "..."
        raise UnsupportedPattern(f"path {shown}")
    return ioc_type


def _comparison_values(test: Grammar.PropTestContext) -> list[tuple[str, str]]:
    """(ioc type, value) of one comparison: ``path = 'v'`` gives one, ``path IN ('v', 'w')`` one per item."""
    operator = " ".join(
        child.getText()
        for child in test.getChildren()
        if isinstance(child, TerminalNode) and child.symbol.type != Grammar.StringLiteral
    )
    if operator not in ("=", "IN"):  # !=, NOT =, >, LIKE, MATCHES, ISSUBSET, EXISTS, ...
        raise UnsupportedPattern(operator)
    ioc_type = _stix_path_ioc_type(test.objectPath())
    literal = test.primitiveLiteral() if operator == "=" else test.setLiteral()
    items = [t for t in _tokens(literal) if t.symbol.type not in _STIX_SET_PUNCTUATION]
    if not items:
        raise UnsupportedPattern("empty IN ()")
    if any(t.symbol.type != Grammar.StringLiteral for t in items):
        raise UnsupportedPattern("value that is not a string")
    return [(ioc_type, _string_literal(t.getText())) for t in items]


def stix_pattern_values(pattern: str) -> list[tuple[str, str]]:
    """(ioc type, value) of every comparison of a pattern that matches exactly when one of them does.

    That is equalities (or IN) on supported paths, joined by OR within and across observations. Raises
    ParseException for an invalid pattern, UnsupportedPattern naming the first construct (outermost,
    then left to right) that a list of values would misrepresent: AND, FOLLOWEDBY, a qualifier, another
    operator or another path.
    """
    values: list[tuple[str, str]] = []
    stack: list[ParserRuleContext] = [Pattern(pattern).visit(_ParseTreeRoot())]
    while stack:
        node = stack.pop()
        if type(node) in _STIX_QUALIFIED:
            raise UnsupportedPattern(f"qualifier {_STIX_QUALIFIED[type(node)]}")
        if isinstance(node, Grammar.PropTestContext) and not isinstance(node, Grammar.PropTestParenContext):
            values.extend(_comparison_values(node))
            continue
        children = list(node.getChildren())
        for child in children:
            if isinstance(child, TerminalNode) and child.symbol.type in (Grammar.AND, Grammar.FOLLOWEDBY):
                raise UnsupportedPattern(child.getText())
        # What is left: OR, [ ], ( ) and the end of input, whose operands are walked in turn.
        stack.extend(reversed([child for child in children if not isinstance(child, TerminalNode)]))
    return values


def _stix_timestamp(value: object) -> datetime | None:
    """A STIX timestamp as an aware datetime (UTC when it names no zone), or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _indicator_records(indicator: dict, now: datetime) -> Iterator[Record]:
    pattern = indicator.get("pattern")
    if indicator.get("pattern_type", "stix") != "stix" or not isinstance(pattern, str):
        yield RowRejected("indicator has no STIX pattern")
        return
    if "valid_until" in indicator:
        valid_until = _stix_timestamp(indicator["valid_until"])
        if valid_until is None:
            yield RowRejected("indicator valid_until is not a timestamp")
            return
        if valid_until <= now:
            yield RowFiltered("stix_expired")
            return
    try:
        values = stix_pattern_values(pattern)
    except ParseException:  # its message quotes the pattern: the reason must not
        yield RowRejected("STIX pattern syntax error")
        return
    except UnsupportedPattern as exc:
        yield RowRejected(f"unsupported STIX pattern: {exc}")
        return
    except RecursionError:  # parentheses nested hundreds deep
        yield RowRejected("STIX pattern nests too deeply")
        return
    types = indicator.get("indicator_types")
    action = "ALLOW" if isinstance(types, list) and "benign" in types else "BLOCK"
    name = indicator.get("name")
    comment = name if isinstance(name, str) else indicator.get("description")
    for ioc_type, value in values:
        yield make_row(ioc_type, value, action, comment)


def stix2_records(data: object, now: datetime | None = None) -> Iterator[Record]:
    """Records of every object: rows of indicators, the rest filtered or rejected by name.

    ``now`` (aware) decides which indicators have expired; a run takes the clock, tests fix it.
    """
    assert isinstance(data, dict)
    now = now or datetime.now(UTC)
    for obj in data["objects"]:
        if not isinstance(obj, dict):
            yield RowRejected("STIX object is not a JSON object")
        elif obj.get("type") != "indicator":
            yield RowFiltered("stix_not_indicator")
        elif obj.get("revoked") is True:
            yield RowFiltered("stix_revoked")
        else:
            yield from _indicator_records(obj, now)


# ---- misp_event: attributes of a MISP event (and of its objects) of the supported types.

_MISP_TYPES = {"md5", "sha1", "sha256", "domain", "hostname", "ip-src", "ip-dst", "url"}
ALLOW_TAG = "allowlist"
# to_ids as MISP exports write it: JSON true/false, 1/0, "1"/"0" or "true"/"false" (by their text).
_MISP_TO_IDS = {"true": True, "1": True, "false": False, "0": False}


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


def _misp_to_ids(value: object) -> bool | None:
    """Whether an attribute is meant for detection (MISP's to_ids), or None when it does not say."""
    return _MISP_TO_IDS.get(str(value).strip().lower()) if isinstance(value, bool | int | str) else None


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
        allowed = event_allows or _tagged_allow(attribute)
        to_ids = _misp_to_ids(attribute.get("to_ids", True))
        if to_ids is None:
            yield RowRejected("MISP to_ids is neither true nor false")
            continue
        if not to_ids and not allowed:  # context, not meant for detection: block nothing on it
            yield RowFiltered("misp_not_to_ids")
            continue
        action = "ALLOW" if allowed else "BLOCK"
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
