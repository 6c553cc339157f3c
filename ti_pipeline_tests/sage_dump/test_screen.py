"""The screen (decide from top-level fields, decode only the rest) gives exactly what decoding every
document gives: the same rows, counts, reasons and quarantine, on the real mix and on crafted documents."""

import io
import struct
from array import array
from datetime import datetime

import bson
import numpy as np
import pytest
from bson.binary import Binary
from bson.codec_options import CodecOptions
from bson.int64 import Int64

from ti_pipeline.core.accounting import Accounting, QuarantineRecord
from ti_pipeline.core.values import ImportPolicy
from ti_pipeline.sage_dump import screen
from ti_pipeline.sage_dump.bson_stream import Block, iter_blocks
from ti_pipeline.sage_dump.pipeline import EXCERPT_BYTES, BlockResult, transform_block
from ti_pipeline.sage_dump.rules import RULES, Filtered, Rejected, RuleContext
from ti_pipeline.sample_data.sage import domain_docs, file_rep_docs

NOW = datetime(2020, 11, 5, 12, 0, 0)
DEFAULT = RuleContext(ImportPolicy.parse(None), NOW)
EVERYTHING = RuleContext(ImportPolicy.parse("ALL"), NOW)
WHITELIST = RuleContext(ImportPolicy.parse("WHITELIST,MALWARE"), NOW)
CODEC = CodecOptions(tz_aware=False, unicode_decode_error_handler="replace")
SHA1 = "b" * 40


def decode_every_document(collection: str, block: Block, ctx: RuleContext) -> BlockResult:
    """The reference: every document decoded in full and given to the rule (the path before the screen)."""
    result = BlockResult(bytes_read=len(block.data))
    bounds = [*block.starts, len(block.data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        result.accounting.read += 1
        raw = block.data[start:end]
        try:
            produced = RULES[collection](bson.decode(raw, CODEC), ctx)
        except Filtered as f:
            result.accounting.filter(f.rule)
            continue
        except Rejected as r:
            reason = r.reason
            result.accounting.reject(reason)
        except Exception as exc:  # noqa: BLE001 - as the pipeline: an undecodable document
            reason = f"undecodable_document: {exc}"[:255]
            result.accounting.reject("undecodable_document")
        else:
            result.accounting.written += 1
            for table, row in produced:
                result.rows.setdefault(table, []).append(row)
            continue
        result.quarantine.append(QuarantineRecord("mem://x", reason, block.offset + start, raw[:EXCERPT_BYTES].hex()))
    return result


def blocks_of(raw_docs: list[bytes], block_bytes: int = 1 << 20) -> list[Block]:
    return list(iter_blocks(io.BytesIO(b"".join(raw_docs)), block_bytes))


def assert_same(collection: str, raw_docs: list[bytes], ctx: RuleContext = DEFAULT, block_bytes: int = 1 << 20) -> Accounting:
    total = Accounting()
    for block in blocks_of(raw_docs, block_bytes):
        got = transform_block(collection, "mem://x", block, ctx)
        want = decode_every_document(collection, block, ctx)
        assert got.accounting == want.accounting
        assert got.rows == want.rows
        assert got.quarantine == want.quarantine
        total.merge(got.accounting)
    return total


def screened(collection: str, raw_docs: list[bytes], ctx: RuleContext = DEFAULT) -> list[str | None]:
    """What the screen alone decides for each document (None: decode it)."""
    [block] = blocks_of(raw_docs, 64 << 20)
    starts = np.frombuffer(block.starts, np.int64)
    decider = screen.SCREENS[collection]
    return [decider.outcomes[i] for i in decider(block.data, starts, np.append(starts[1:], len(block.data)), ctx)]


# ---- the real mix -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ctx", [DEFAULT, EVERYTHING, WHITELIST], ids=["default", "ALL", "whitelist+malware"])
@pytest.mark.parametrize("seed", [0, 1])
def test_real_file_rep_mix_gives_the_same_rows_counts_and_quarantine(ctx, seed):
    raw = [bson.encode(d) for d in file_rep_docs("r01", 3000, seed=seed)]
    acc = assert_same("file_rep", raw, ctx, block_bytes=256 << 10)
    assert acc.written > 50 and acc.rejected and acc.filtered["response_code_not_1"] > 2000
    decided = screened("file_rep", raw, ctx)
    # The screen does decide the bulk: every response_code_not_1, and what the policy skips.
    assert decided.count("response_code_not_1") == acc.filtered["response_code_not_1"]
    assert decided.count("classification_not_imported") >= 0.9 * acc.filtered["classification_not_imported"]


def test_real_domain_mix_gives_the_same_rows_counts_and_quarantine():
    raw = [bson.encode(d) for d in domain_docs("r01", 3000)]
    acc = assert_same("domain_classification", raw, block_bytes=128 << 10)
    assert acc.filtered["unknown"] > 500 and acc.rejected
    assert screened("domain_classification", raw).count("unknown") == acc.filtered["unknown"]


# ---- crafted documents ------------------------------------------------------------------------------


def element(kind: int, name: bytes, payload: bytes) -> bytes:
    return bytes([kind]) + name + b"\0" + payload


def string(text: bytes) -> bytes:
    return struct.pack("<i", len(text) + 1) + text + b"\0"


def document(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return struct.pack("<i", len(body) + 5) + body + b"\0"


def int32(value: int) -> bytes:
    return struct.pack("<i", value)


ID = element(2, b"_id", string(SHA1.encode()))
NOT_FOUND = element(2, b"response", string(b"unknown(-1.0,-1.0);NONE.null"))
MALWARE = element(2, b"response", string(b"malware.virus.trojan(14.57,14.35);NONE.null"))
WHITELISTED = element(2, b"response", string(b"whitelist(-1.0,-1.0);NONE.null"))


def code(kind: int, payload: bytes) -> bytes:
    return element(3, b"value", document(element(kind, b"response_code", payload)))


CODE_0, CODE_1 = code(16, int32(0)), code(16, int32(1))


def verdict(*elements: bytes) -> bytes:
    return element(3, b"vtClassifierV2Classification", document(*elements))


def report(response: bytes, **fields) -> bytes:
    """A whole document as the dump has it, with a full report when ``response_code`` is 1."""
    value = {"response_code": 1, "sha256": "a" * 64, "scan_date": "2020-10-01 12:30:00", "positives": 1, "total": 2,
             "scans": {"E": {"detected": True, "result": "X"}}, **fields}
    return bson.encode({"_id": SHA1, "response": response, "firstSeen": 1600000000000, "value": value})


EVERY_TYPE = {  # one element of each BSON type the walk reads past, valid for bson.decode
    "double": element(1, b"d", struct.pack("<d", 2.5)),
    "string": element(2, b"s", string("€ü".encode())),
    "document": element(3, b"o", document(element(16, b"response_code", int32(1)))),
    "array": element(4, b"a", document(element(2, b"0", string(b"x")), element(16, b"1", int32(0)))),
    "binary": element(5, b"b", struct.pack("<i", 3) + b"\x00abc"),
    "uuid": element(5, b"u", struct.pack("<i", 16) + b"\x04" + bytes(range(16))),
    "user-binary": element(5, b"b", struct.pack("<i", 1) + b"\x80z"),
    "undefined": element(6, b"n", b""),
    "objectid": element(7, b"i", bytes(12)),
    "true": element(8, b"t", b"\x01"),
    "false": element(8, b"f", b"\x00"),
    "datetime": element(9, b"t", struct.pack("<q", 1600000000000)),
    "datetime-first": element(9, b"t", struct.pack("<q", -62135596800000)),
    "datetime-last": element(9, b"t", struct.pack("<q", 253402300799999)),
    "null": element(10, b"z", b""),
    "int32": element(16, b"i", int32(-7)),
    "timestamp": element(17, b"ts", bytes(8)),
    "int64": element(18, b"l", struct.pack("<q", 1 << 40)),
    "decimal128": element(19, b"m", b"\xff" * 16),
    "maxkey": element(127, b"x", b""),
    "minkey": element(255, b"x", b""),
    "empty-name": element(16, b"", int32(1)),
    "long-name": element(16, b"n" * 40, int32(1)),
    "name-31": element(16, b"n" * 31, int32(1)),
    "utf8-name": element(16, "schlüssel".encode(), int32(1)),
    "bad-utf8-name": element(16, b"a\xff", int32(1)),
    "bad-utf8-string": element(2, b"s", string(b"\xffx")),
    "interior-nul": element(2, b"s", string(b"x\0y")),
    # Types the walk leaves to the full decode.
    "regex": element(11, b"r", b"a.*\0i\0"),
    "dbpointer": element(12, b"p", string(b"c") + bytes(12)),
    "code": element(13, b"c", string(b"f()")),
    "symbol": element(14, b"y", string(b"sym")),
    "code-with-scope": element(15, b"c", struct.pack("<i", 4 + 8 + 5) + string(b"f()") + document()),
    "old-binary": element(5, b"b", struct.pack("<i", 7) + b"\x02" + struct.pack("<i", 3) + b"abc"),
}
BROKEN = {  # elements bson.decode refuses: the document is undecodable wherever the element is
    "bool-2": element(8, b"t", b"\x02"),
    "datetime-too-late": element(9, b"t", struct.pack("<q", 253402300800000)),
    "datetime-too-early": element(9, b"t", struct.pack("<q", -62135596800001)),
    "unknown-type": element(0x20, b"q", b""),
    "string-length-0": element(2, b"s", int32(0)),
    "string-length-negative": element(2, b"s", int32(-5) + b"abc\0"),
    "string-without-nul": element(2, b"s", int32(3) + b"abc"),
    "document-length-4": element(3, b"o", int32(4)),
    "document-without-nul": element(3, b"o", int32(5) + b"\x01"),
    "old-binary-bad-inner-length": element(5, b"b", struct.pack("<i", 7) + b"\x02" + struct.pack("<i", 9) + b"abc"),
}


def test_every_crafted_element_is_what_its_name_says():
    for name, raw in EVERY_TYPE.items():
        assert isinstance(bson.decode(document(raw), CODEC), dict), name
    for name, raw in BROKEN.items():
        with pytest.raises(Exception):  # noqa: B017, PT011 - any refusal
            bson.decode(document(raw), CODEC)
            pytest.fail(name)


TOP = [ID, NOT_FOUND, CODE_0]


def variants() -> dict[str, bytes]:
    """Documents around each element and decision field: at the top, in ``value``, in any order."""
    docs = {}
    for name, raw in {**EVERY_TYPE, **BROKEN}.items():
        docs[f"top-{name}"] = document(raw, *TOP)
        docs[f"top-after-{name}"] = document(*TOP, raw)
        docs[f"value-{name}"] = document(ID, NOT_FOUND, element(3, b"value", document(raw, element(16, b"response_code", int32(0)))))
        docs[f"value-after-code-{name}"] = document(
            ID, NOT_FOUND, element(3, b"value", document(element(16, b"response_code", int32(0)), raw)))
        docs[f"code-1-{name}"] = document(ID, WHITELISTED, raw, CODE_1)
        docs[f"verdict-{name}"] = document(ID, MALWARE, verdict(raw, element(2, b"classification", string(b"whitelist"))), CODE_1)
    codes = {
        "int32-0": (16, int32(0)), "int32-1": (16, int32(1)), "int32-2": (16, int32(2)), "int32-minus-1": (16, int32(-1)),
        "int64-0": (18, struct.pack("<q", 0)), "int64-1": (18, struct.pack("<q", 1)),
        "int64-2^32+1": (18, struct.pack("<q", (1 << 32) + 1)),
        "double-0": (1, struct.pack("<d", 0.0)), "double-1": (1, struct.pack("<d", 1.0)),
        "double-minus-0": (1, struct.pack("<d", -0.0)), "double-1.5": (1, struct.pack("<d", 1.5)),
        "double-nan": (1, struct.pack("<d", float("nan"))), "double-inf": (1, struct.pack("<d", float("inf"))),
        "double-1e300": (1, struct.pack("<d", 1e300)),
        "string-0": (2, string(b"0")), "string-1": (2, string(b" 1.0 ")), "string-x": (2, string(b"x")),
        "true": (8, b"\x01"), "null": (10, b""), "document": (3, document()),
    }
    for name, (kind, payload) in codes.items():
        for response_name, response in (("not-found", NOT_FOUND), ("whitelist", WHITELISTED), ("malware", MALWARE)):
            docs[f"code-{name}-{response_name}"] = document(ID, response, code(kind, payload))
            docs[f"code-{name}-{response_name}-value-first"] = document(code(kind, payload), response, ID)
    docs.update({
        "no-response": document(ID, CODE_1),
        "no-response-code-0": document(ID, CODE_0),
        "response-int": document(ID, element(16, b"response", int32(42)), CODE_1),
        "response-null": document(ID, element(10, b"response", b""), CODE_1),
        "response-blank": document(ID, element(2, b"response", string(b"   ")), CODE_1),
        "response-unknown-word": document(ID, element(2, b"response", string(b"foo.bar(1,1)")), CODE_1),
        "response-twice": document(ID, MALWARE, CODE_1, WHITELISTED),
        "response-twice-other-order": document(ID, WHITELISTED, CODE_1, MALWARE),
        "no-value": document(ID, NOT_FOUND),
        "value-string": document(ID, NOT_FOUND, element(2, b"value", string(b"x"))),
        "value-array": document(ID, NOT_FOUND, element(4, b"value", document(element(16, b"0", int32(0))))),
        "value-null": document(ID, NOT_FOUND, element(10, b"value", b"")),
        "value-empty": document(ID, NOT_FOUND, element(3, b"value", document())),
        "value-twice": document(ID, WHITELISTED, CODE_0, CODE_1),
        "value-twice-other-order": document(ID, WHITELISTED, CODE_1, CODE_0),
        "value-dbref": document(ID, NOT_FOUND, element(3, b"value", document(
            element(2, b"$ref", string(b"c")), element(16, b"$id", int32(1)), element(16, b"response_code", int32(0))))),
        "value-dollar-name": document(ID, NOT_FOUND, element(3, b"value", document(
            element(16, b"$ref", int32(1)), element(16, b"response_code", int32(0))))),
        "top-dollar-name": document(element(16, b"$x", int32(1)), *TOP),
        "response-code-twice": document(ID, WHITELISTED, element(3, b"value", document(
            element(16, b"response_code", int32(0)), element(16, b"response_code", int32(1))))),
        "response-code-twice-other-order": document(ID, WHITELISTED, element(3, b"value", document(
            element(16, b"response_code", int32(1)), element(16, b"response_code", int32(0))))),
        "response-code-at-the-top": document(ID, NOT_FOUND, element(16, b"response_code", int32(0)),
                                             element(3, b"value", document())),
        "names-of-top-fields-nested": document(ID, WHITELISTED, element(3, b"value", document(
            element(2, b"response", string(b"malware")), element(3, b"value", document(element(16, b"response_code", int32(0)))),
            verdict(element(2, b"classification", string(b"malware"))),
            element(3, b"scans", document(element(16, b"response_code", int32(0)))),
            element(16, b"response_code", int32(1))))),
        "verdict-malware": document(ID, WHITELISTED, verdict(element(2, b"classification", string(b"malware"))), CODE_1),
        "verdict-whitelist": document(ID, MALWARE, verdict(element(2, b"classification", string(b"whitelist"))), CODE_1),
        "verdict-after-value": document(ID, MALWARE, CODE_1, verdict(element(2, b"classification", string(b"whitelist")))),
        "verdict-empty": document(ID, WHITELISTED, verdict(), CODE_1),
        "verdict-blank": document(ID, MALWARE, verdict(element(2, b"classification", string(b" "))), CODE_1),
        "verdict-int": document(ID, MALWARE, verdict(element(16, b"classification", int32(3))), CODE_1),
        "verdict-unknown-word": document(ID, MALWARE, verdict(element(2, b"classification", string(b"benignish"))), CODE_1),
        "verdict-string": document(ID, WHITELISTED, element(2, b"vtClassifierV2Classification", string(b"malware")), CODE_1),
        "verdict-array": document(ID, WHITELISTED, element(4, b"vtClassifierV2Classification", document(
            element(2, b"0", string(b"malware")))), CODE_1),
        "verdict-twice": document(ID, WHITELISTED, verdict(element(2, b"classification", string(b"whitelist"))),
                                  verdict(element(2, b"classification", string(b"malware"))), CODE_1),
        "verdict-classification-twice": document(ID, MALWARE, verdict(
            element(2, b"classification", string(b"whitelist")), element(2, b"classification", string(b"malware"))), CODE_1),
        "verdict-dbref": document(ID, MALWARE, verdict(
            element(2, b"$ref", string(b"c")), element(16, b"$id", int32(1)), element(2, b"classification", string(b"whitelist"))),
            CODE_1),
        "bad-utf8-response": document(ID, element(2, b"response", string(b"whitelist\xff(1,1)")), CODE_1),
        "many-elements": document(*(element(16, f"k{i}".encode(), int32(i)) for i in range(screen.MAX_ELEMENTS + 1)), *TOP),
        "many-elements-in-value": document(ID, NOT_FOUND, element(3, b"value", document(
            *(element(16, f"k{i}".encode(), int32(i)) for i in range(screen.MAX_ELEMENTS)), element(16, b"response_code", int32(0))))),
        "full-report-filtered": report("whitelist(-1.0,-1.0);NONE.null"),
        "full-report-row": report("malware.virus.trojan(14.57,14.35);NONE.null"),
        "full-report-row-bad-sha256": report("malware.virus.trojan(14.57,14.35);NONE.null", sha256="zz"),
    })
    return docs


def framing_damage() -> dict[str, bytes]:
    """Documents whose own length framing holds but whose elements run past it, or fall short of it."""
    good = document(*TOP)
    inner = document(element(16, b"response_code", int32(0)))
    return {
        "string-length-past-the-end": document(ID, element(2, b"response", int32(500) + b"unknown\0"), CODE_0),
        "string-length-short": document(ID, element(2, b"response", int32(3) + b"unknown\0"), CODE_0),
        "value-length-past-the-end": document(ID, NOT_FOUND, element(3, b"value", int32(len(inner) + 40) + inner[4:])),
        "value-length-short": document(ID, NOT_FOUND, element(3, b"value", int32(len(inner) - 3) + inner[4:])),
        "name-runs-to-the-end": document(*TOP, b"\x10abc")[:-1] + b"\0",
        "garbage-before-the-terminator": struct.pack("<i", len(good) + 3) + good[4:-1] + b"\x10\x01\x02" + b"\0",
        "empty-document": document(),
        "nul-type-early": struct.pack("<i", len(good) + 1) + good[4:-1] + b"\0\0",
    }


CRAFTED = {**variants(), **framing_damage()}


@pytest.mark.parametrize("ctx", [DEFAULT, EVERYTHING], ids=["default", "ALL"])
@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_document_gives_what_the_full_decode_gives(name, ctx):
    raw = CRAFTED[name]
    neighbours = [bson.encode(d) for d in file_rep_docs("r02", 6)]
    assert_same("file_rep", [raw], ctx)
    assert_same("file_rep", [*neighbours[:3], raw, *neighbours[3:]], ctx)


def test_the_crafted_documents_reach_both_paths():
    """The crafted set is decided by the screen for some documents and by the full decode for others."""
    decided = screened("file_rep", list(CRAFTED.values()))
    assert decided.count("response_code_not_1") > 50 and decided.count("classification_not_imported") > 10
    assert decided.count(None) > 100


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_element_at_the_two_walked_levels_is_undecodable_never_filtered(name):
    raw = BROKEN[name]
    for doc in (document(raw, *TOP), document(ID, NOT_FOUND, element(3, b"value", document(
            raw, element(16, b"response_code", int32(0)))))):
        assert screened("file_rep", [doc]) == [None]
        assert assert_same("file_rep", [doc]).rejected == {"undecodable_document": 1}


def test_below_value_only_the_framing_is_checked():
    """A filtered document whose damage lies inside a document below ``value`` (within a length and NUL
    that hold) is counted as filtered, not decoded: the one difference from decoding everything, and
    the reason the screen is cheaper. A document that becomes a row is still decoded in full."""
    damaged = document(element(8, b"detected", b"\x02"))
    scans = element(3, b"scans", document(element(3, b"E", damaged)))
    filtered = document(ID, WHITELISTED, element(3, b"value", document(element(16, b"response_code", int32(1)), scans)))
    row = document(ID, MALWARE, element(3, b"value", document(element(16, b"response_code", int32(1)), scans)))
    assert screened("file_rep", [filtered, row]) == ["classification_not_imported", None]
    [block] = blocks_of([filtered, row])
    acc = transform_block("file_rep", "mem://x", block, DEFAULT).accounting
    assert acc.filtered == {"classification_not_imported": 1} and acc.rejected == {"undecodable_document": 1}


def domain(response: bytes | None, domain_id: bytes | None = b"example.com", *extra: bytes) -> bytes:
    elements = [element(2, b"_id", string(domain_id))] if domain_id is not None else []
    if response is not None:
        elements.append(element(2, b"response", string(response)))
    return document(*elements, *extra, element(3, b"value", document(element(16, b"responseCode", int32(0)))))


DOMAINS = {
    "unknown": domain(b"maliciousClassification=unknown"),
    "unknown-invalid-id": domain(b"maliciousClassification=unknown", b"not a domain!"),
    "unknown-no-id": domain(b"maliciousClassification=unknown", None),
    "unknown-id-int": document(element(16, b"_id", int32(1)), element(2, b"response", string(b"maliciousClassification=unknown"))),
    "unknown-spaced": domain(b" maliciousClassification = Unknown "),
    "unknown-idn": domain(b"maliciousClassification=unknown", "Bücher.Example".encode()),
    "unknown-response-twice": domain(b"maliciousClassification=unknown", b"example.com",
                                     element(2, b"response", string(b"maliciousClassification=malware"))),
    "malware-then-unknown": domain(b"maliciousClassification=malware", b"example.com",
                                   element(2, b"response", string(b"maliciousClassification=unknown"))),
    "unknown-no-value": document(element(2, b"_id", string(b"example.com")),
                                 element(2, b"response", string(b"maliciousClassification=unknown"))),
    "unknown-bool-2": domain(b"maliciousClassification=unknown", b"example.com", BROKEN["bool-2"]),
    "malware": domain(b"maliciousClassification=malware"),
    "no-response": domain(None),
    "indifferent": domain(b"maliciousClassification=indifferent"),
}


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_a_crafted_domain_document_gives_what_the_full_decode_gives(name):
    neighbours = [bson.encode(d) for d in domain_docs("r02", 6)]
    assert_same("domain_classification", [DOMAINS[name]])
    assert_same("domain_classification", [*neighbours[:3], DOMAINS[name], *neighbours[3:]])


def test_the_usual_unknown_domain_is_screened():
    assert screened("domain_classification", [DOMAINS["unknown"], DOMAINS["unknown-invalid-id"], DOMAINS["malware"]]) == [
        "unknown", "unknown", None]


def test_other_collections_are_not_screened():
    raw = bson.encode({"_id": "198.51.100.1", "response": "malware", "value": {"type": "IPv4"}})
    block = Block(0, raw, 1, array("q", [0]))
    result = transform_block("TOKENS", "mem://x", block, DEFAULT)
    assert result.accounting.written == 1 and "TOKENS" not in screen.SCREENS


def test_verdicts_with_binary_fields_are_cached_by_their_classification():
    """Real verdicts carry a random taskUUID; the decision must not depend on it."""
    docs = [bson.encode({"_id": SHA1, "response": "malware.x(1,1);NONE.null", "vtClassifierV2Classification": {
        "taskUUID": Binary(bytes([i]) * 16, 3), "classification": word}, "value": {"response_code": Int64(1)}})
        for i, word in enumerate(["whitelist", "indifferent", "malware", "whitelist"])]
    assert screened("file_rep", docs) == ["classification_not_imported", "classification_not_imported", None,
                                          "classification_not_imported"]
    assert_same("file_rep", docs)
