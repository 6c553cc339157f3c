"""Decide most big-collection documents from their top-level fields, without decoding them.

Most of file_rep is filtered (``response_code`` not 1, or a classification the import policy skips) and
a quarter of domain_classification is ``unknown``; decoding such a document only to drop it is most of a
load's CPU. A collection's ``Screen`` (``SCREENS``) walks the elements of every document of a block at
once with numpy (type byte, name up to its NUL, value skipped by its fixed size or its int32 length), then
does the same inside each document's ``value``, and names the documents a rule filters on those fields
alone. Everything else (rows, rejections, and any document the walk does not fully understand) is decoded
in full by the caller and given to the rule, as before, so rows and reasons do not change. The filter
itself is the rule's: it runs on a stub of the fields read (only ``response_code`` not 1 is also read
in numpy, for the bulk of int32/int64/double codes).

What the walk checks is what ``bson.decode`` checks at those two levels: known type codes, lengths that
fit and end in a NUL, booleans 0/1, datetimes within Python's years; a document or array below ``value``
(``scans``, ``additional_info``, ...) is checked only for its length and terminating NUL, so damage
strictly inside one is not seen in a document that is filtered (it is in every document decoded).
Anything else (an unknown or unusual type, a name starting with ``$``, a decision field given twice,
too many elements) sends the document to the full decode.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import bson
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ti_pipeline.core.values import FILTER_CLASSIFICATION_NOT_IMPORTED
from ti_pipeline.sage_dump.bson_stream import CODEC
from ti_pipeline.sage_dump.rules import Filtered, RuleContext, domain_classification, file_rep

# Per type code: the value's fixed size, or the bytes before its int32-counted part (string: the
# length itself; document/array: none, the length counts itself; binary: length and subtype), the
# least length bson.decode accepts, and whether the value must end in a NUL. A type not listed
# (regex, DBPointer, code, symbol, code with scope, undefined codes) is left to the full decode.
_KNOWN = np.zeros(256, bool)
_BASE = np.zeros(256, np.int64)
_COUNTED = np.zeros(256, np.int64)
_LEAST = np.full(256, -(1 << 31), np.int64)
_NUL_LAST = np.zeros(256, bool)
for _code, _size in {1: 8, 6: 0, 7: 12, 8: 1, 9: 8, 10: 0, 16: 4, 17: 8, 18: 8, 19: 16, 127: 0, 255: 0}.items():
    _KNOWN[_code], _BASE[_code] = True, _size
for _code, _base, _least in ((2, 4, 1), (3, 0, 5), (4, 0, 5), (5, 5, 0)):
    _KNOWN[_code], _BASE[_code], _COUNTED[_code], _LEAST[_code] = True, _base, 1, _least
    _NUL_LAST[_code] = _code != 5
_BOOLEAN, _DATETIME, _BINARY, _DOUBLE, _INT32, _INT64, _EMBEDDED, _STRING = 8, 9, 5, 1, 16, 18, 3, 2
_CHECKED = np.zeros(256, bool)  # types whose value bson.decode checks further
_CHECKED[[_BOOLEAN, _DATETIME, _BINARY]] = True
# What a naive datetime can hold (years 1-9999), as bson.decode accepts it.
_MIN_MS, _MAX_MS = -62135596800000, 253402300799999
_OLD_BINARY = 2  # subtype whose inner length bson.decode checks: left to it
# Elements walked per container before its document is left to the full decode, and the longest name read.
MAX_ELEMENTS = 64
MAX_NAME = 31
_PAD = MAX_NAME + 9
_LOW_BITS, _HIGH_BITS, _ONE = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080), np.uint64(1)
_NUL_BITS = np.array([0] + [1 << (8 * i + 7) for i in range(8)], np.uint64)  # none, then the flag of byte 0..7


@dataclass(frozen=True)
class Elements:
    """The elements of a set of containers (documents or sub-documents), flat; ``bad`` per container."""

    container: np.ndarray  # which container each element is in
    kind: np.ndarray  # type code
    name: np.ndarray  # offset of the name
    name_length: np.ndarray
    value: np.ndarray  # offset of the value
    end: np.ndarray  # offset after the value
    bad: np.ndarray  # per container: not walked to its end (left to the full decode)


class _Block:
    """A block's bytes with the views the walk reads through: a number of each type starting at every
    byte offset (unaligned, strided by one byte), over a copy padded so that any read near the end fits."""

    def __init__(self, data: bytes):
        self.data = data
        self.bytes = np.frombuffer(data, np.uint8)
        padded = np.zeros(len(data) + _PAD, np.uint8)
        padded[: len(data)] = self.bytes
        starts = len(data) + _PAD - 8
        self.int32s = np.ndarray((starts,), "<i4", padded, 0, (1,))
        self.int64s = np.ndarray((starts,), "<i8", padded, 0, (1,))
        self.doubles = np.ndarray((starts,), "<f8", padded, 0, (1,))
        self.words = np.ndarray((starts,), "<u8", padded, 0, (1,))

    def name_lengths(self, at: np.ndarray) -> np.ndarray:
        """The length of the names starting at ``at`` (the first NUL, 8 bytes at a time); -1 for one
        longer than MAX_NAME."""
        length = self._first_nul(self.words[at])
        for word in range(8, MAX_NAME + 1, 8):
            todo = np.flatnonzero(length < 0)
            if not todo.size:
                break
            more = self._first_nul(self.words[at[todo] + word])
            length[todo] = np.where(more < 0, -1, more + word)
        return length

    @staticmethod
    def _first_nul(words: np.ndarray) -> np.ndarray:
        """Index of the first NUL byte of each little-endian word, -1 for none."""
        zero = (words - _LOW_BITS) & ~words & _HIGH_BITS  # the high bit of each NUL byte (exact for the first)
        return np.searchsorted(_NUL_BITS, zero & (~zero + _ONE)) - 1

    def named(self, elements: Elements, name: bytes) -> np.ndarray:
        """Indexes of the elements called ``name``."""
        candidates = np.flatnonzero(elements.name_length == len(name))
        if not candidates.size or not name:
            return candidates
        want = np.frombuffer(name, np.uint8)
        names = sliding_window_view(self.bytes, len(name))[elements.name[candidates]]
        return candidates[(names == want).all(axis=1)]

    def holds(self, elements: Elements, at: np.ndarray, text: bytes) -> np.ndarray:
        """Whether the string elements ``at`` hold exactly ``text``."""
        framed = np.frombuffer(struct.pack("<i", len(text) + 1) + text + b"\0", np.uint8)
        fits = elements.end[at] - elements.value[at] == len(framed)
        same = np.zeros(len(at), bool)
        if fits.any():
            same[fits] = (sliding_window_view(self.bytes, len(framed))[elements.value[at[fits]]] == framed).all(axis=1)
        return same


_UNKNOWN_DOMAIN = b"maliciousClassification=unknown"


def walk(block: _Block, starts: np.ndarray, ends: np.ndarray) -> Elements:
    """Every element of the containers ``[starts[i], ends[i])`` (each framed: int32 length, NUL last).

    All containers advance one element per step; one whose element does not hold jumps past its end
    and is ``bad``, as is one with more than MAX_ELEMENTS elements."""
    raw, size = block.bytes, len(block.bytes)
    position = starts + 4
    stop = ends - 1  # the terminating NUL
    beyond = size + 1  # where a container that went wrong is sent
    live = np.arange(len(starts))
    found: list[tuple[np.ndarray, ...]] = []
    for _ in range(MAX_ELEMENTS):
        live = live[position[live] < stop[live]]
        if not live.size:
            break
        at = position[live]
        kind = raw[at].astype(np.intp)
        name_length = block.name_lengths(at + 1)
        value = at + 2 + name_length
        length = block.int32s[np.minimum(value, size)] * _COUNTED[kind]
        end = value + _BASE[kind] + length
        ok = _KNOWN[kind] & (name_length >= 0) & (end <= stop[live]) & (length >= _LEAST[kind]) & (raw[at + 1] != ord("$"))
        ok &= ~_NUL_LAST[kind] | (raw[np.maximum(np.minimum(end - 1, size - 1), 0)] == 0)
        checked = np.flatnonzero(ok & _CHECKED[kind])
        if checked.size:
            ok[checked] = _value_checks(block, kind[checked], value[checked])
        end[~ok] = beyond
        found.append((live, kind, at + 1, name_length, value, end))
        position[live] = end
    bad = position != stop
    columns = [np.concatenate(c) for c in zip(*found, strict=True)] if found else [np.zeros(0, np.int64)] * 6
    keep = ~bad[columns[0]]  # the elements of bad containers are not read
    return Elements(*(c[keep] for c in columns), bad=bad)


def _value_checks(block: _Block, kind: np.ndarray, value: np.ndarray) -> np.ndarray:
    """What bson.decode checks in a boolean, datetime or binary value beyond its size."""
    ok = np.ones(len(kind), bool)
    boolean, dated, binary = kind == _BOOLEAN, kind == _DATETIME, kind == _BINARY
    ok[boolean] = block.bytes[value[boolean]] <= 1
    ms = block.int64s[value[dated]]
    ok[dated] = (ms >= _MIN_MS) & (ms <= _MAX_MS)
    ok[binary] = block.bytes[value[binary] + 4] != _OLD_BINARY
    return ok


def _single(block: _Block, elements: Elements, name: bytes, containers: int) -> tuple[np.ndarray, np.ndarray]:
    """Per container, the index of its one element called ``name`` (-1: none), and whether it has two or more."""
    hits = block.named(elements, name)
    where = np.full(containers, -1, np.int64)
    where[elements.container[hits]] = hits
    return where, np.bincount(elements.container[hits], minlength=containers) > 1


def _element(block: _Block, elements: Elements, index: int) -> bytes:
    start = elements.name[index] - 1
    return block.data[start : elements.end[index]]


def _decode_elements(*raw: bytes) -> dict:
    """Top-level elements decoded alone, exactly as ``bson.decode`` decodes them in their document."""
    body = b"".join(raw)
    return bson.decode(struct.pack("<i", len(body) + 5) + body + b"\0", CODEC)


@dataclass(frozen=True)
class _Walked:
    top: Elements
    inner: Elements  # the elements of each document's ``value`` (container = its document)
    undecided: np.ndarray  # per document: the walk cannot decide it


def _walk_documents(block: _Block, starts: np.ndarray, ends: np.ndarray, names: tuple[bytes, ...]) -> tuple[_Walked, dict]:
    """The walk of the documents and of their ``value``; for each of ``names`` (top level), its element."""
    n = len(starts)
    top = walk(block, starts, ends)
    undecided = top.bad.copy()
    found = {}
    for name in (b"value", *names):
        found[name], twice = _single(block, top, name, n)
        undecided |= twice
    value = found[b"value"]
    embedded = (value >= 0) & ~undecided
    embedded[embedded] = top.kind[value[embedded]] == _EMBEDDED
    undecided |= ~embedded  # no ``value`` document: the rule rejects it, after a full decode
    holders = np.flatnonzero(embedded)
    inner = walk(block, top.value[value[holders]], top.end[value[holders]])
    undecided[holders[inner.bad]] = True
    inner = Elements(holders[inner.container], inner.kind, inner.name, inner.name_length, inner.value, inner.end,
                     inner.bad)
    return _Walked(top, inner, undecided), found


@dataclass(frozen=True)
class Screen:
    """A collection's screen: ``decide`` gives each document of a block an index into ``outcomes``,
    0 (None) meaning "decode it and apply the rule", any other the rule that filters it."""

    decide: Callable[[_Block, np.ndarray, np.ndarray, RuleContext], np.ndarray]
    outcomes: tuple[str | None, ...]

    def __call__(self, data: bytes, starts: np.ndarray, ends: np.ndarray, ctx: RuleContext) -> np.ndarray:
        return self.decide(_Block(data), starts, ends, ctx)


_FILE_REP = (None, "response_code_not_1", FILTER_CLASSIFICATION_NOT_IMPORTED)
_RESPONSE_CODE_NOT_1, _NOT_IMPORTED = 1, 2
_DOMAIN = (None, "unknown")
_NUMBERS = (_INT32, _INT64, _DOUBLE)


def _decide_file_rep(block: _Block, starts: np.ndarray, ends: np.ndarray, ctx: RuleContext) -> np.ndarray:
    """``response_code`` not 1 is read here for int32, int64 and doubles; any other code, and each
    code-1 document's classification, by the rule itself on just those fields (cached per block)."""
    n = len(starts)
    names = (b"response", b"vtClassifierV2Classification")
    walked, found = _walk_documents(block, starts, ends, names)
    top, inner, undecided = walked.top, walked.inner, walked.undecided
    code_at, twice = _single(block, inner, b"response_code", n)
    undecided |= twice
    docs = np.flatnonzero((code_at >= 0) & ~undecided)
    at = code_at[docs]
    kind, value = inner.kind[at], inner.value[at]
    code = np.full(len(docs), np.nan)
    for type_code, numbers in zip(_NUMBERS, (block.int32s, block.int64s, block.doubles), strict=True):
        chosen = kind == type_code
        code[chosen] = numbers[value[chosen]]
    whole = np.isfinite(code) & (code == np.round(code))  # NaN, fractions, other types: the rule reads them
    outcome = np.zeros(n, np.int8)
    outcome[docs[whole & (code != 1)]] = _RESPONSE_CODE_NOT_1
    decided: dict[tuple, int] = {}
    for doc, index in zip(docs[~whole], at[~whole], strict=True):
        element = _element(block, inner, index)
        key = (b"code", element)
        if key not in decided:
            decided[key] = _outcome(file_rep, lambda e=element: {"value": _decode_elements(e)}, ctx, _FILE_REP,
                                    _RESPONSE_CODE_NOT_1)
        outcome[doc] = decided[key]
    verdict_of = _verdict_classifications(block, top, found[names[1]], docs[whole & (code == 1)], undecided)
    for doc in docs[whole & (code == 1)]:
        if undecided[doc]:
            continue
        response = found[names[0]][doc]
        key = (_element(block, top, response) if response >= 0 else None, *verdict_of.get(doc, (None, None)))
        if key not in decided:
            decided[key] = _outcome(file_rep, lambda k=key: _file_stub(*k), ctx, _FILE_REP, _NOT_IMPORTED)
        outcome[doc] = decided[key]
    return outcome


def _verdict_classifications(
    block: _Block, top: Elements, verdict: np.ndarray, docs: np.ndarray, undecided: np.ndarray
) -> dict[int, tuple[int, bytes | None]]:
    """For each of ``docs`` with an ML verdict: its type code and, for a document, its ``classification``
    element (None: absent); a verdict that cannot be walked, or names it twice, marks its document undecided."""
    holders = docs[verdict[docs] >= 0]
    kinds = top.kind[verdict[holders]]
    embedded = holders[kinds == _EMBEDDED]
    at = verdict[embedded]
    elements = walk(block, top.value[at], top.end[at])
    undecided[embedded[elements.bad]] = True
    word_at, twice = _single(block, elements, b"classification", len(embedded))
    undecided[embedded[twice]] = True
    out: dict[int, tuple[int, bytes | None]] = {int(doc): (int(kind), None) for doc, kind in zip(holders, kinds, strict=True)}
    for i, doc in enumerate(embedded):
        if word_at[i] >= 0:
            out[int(doc)] = (_EMBEDDED, _element(block, elements, word_at[i]))
    return out


def _file_stub(response: bytes | None, verdict_kind: int | None, word: bytes | None) -> dict:
    """The fields ``file_classification`` reads, as the full decode would give them."""
    stub = _decode_elements(response) if response is not None else {}
    if verdict_kind == _EMBEDDED:  # any other type is not a verdict, as if absent
        stub["vtClassifierV2Classification"] = _decode_elements(word) if word is not None else {}
    stub["value"] = {"response_code": 1}
    return stub


def _decide_domain(block: _Block, starts: np.ndarray, ends: np.ndarray, ctx: RuleContext) -> np.ndarray:
    """``unknown`` when the ``response`` is the usual ``maliciousClassification=unknown`` and the rule,
    given the ``_id`` and ``response`` alone, skips it; another spelling is decided by the full decode."""
    walked, found = _walk_documents(block, starts, ends, (b"_id", b"response"))
    outcome = np.zeros(len(starts), np.int8)
    response = found[b"response"]
    candidates = np.flatnonzero(~walked.undecided & (response >= 0) & (found[b"_id"] >= 0))
    at = response[candidates]
    text = walked.top.kind[at] == _STRING
    candidates, at = candidates[text], at[text]
    candidates = candidates[block.holds(walked.top, at, _UNKNOWN_DOMAIN)]
    for doc in candidates:
        fields = (_element(block, walked.top, found[b"_id"][doc]), _element(block, walked.top, response[doc]))
        outcome[doc] = _outcome(domain_classification, lambda f=fields: _decode_elements(*f), ctx, _DOMAIN, 1)
    return outcome


def _outcome(
    rule: Callable[[dict, RuleContext], object],
    stub: Callable[[], dict],
    ctx: RuleContext,
    outcomes: tuple[str | None, ...],
    only: int,
) -> int:
    """``only`` when ``rule``, given a ``stub`` of just the fields the screen read, filters it by
    ``outcomes[only]``: the rules decide that filter before they read any other field (their documented
    order), so it holds for the whole document. Anything else (a row, a rejection, another filter,
    which may depend on fields the stub lacks) needs the whole document: 0."""
    try:
        rule(stub(), ctx)
    except Filtered as f:
        return only if f.rule == outcomes[only] else 0
    except Exception:  # noqa: BLE001 - a rejection or anything else: the full decode gives the reason
        return 0
    return 0


SCREENS: dict[str, Screen] = {
    "file_rep": Screen(_decide_file_rep, _FILE_REP),
    "domain_classification": Screen(_decide_domain, _DOMAIN),
}
"""The collections whose documents are screened before decoding (the two big ones)."""
