import gzip
import io
import struct
import zlib

import bson
import pytest

from ti_pipeline.core.accounting import Accounting
from ti_pipeline.sage_dump.bson_stream import GzipStream
from ti_pipeline.sage_dump.load import rule_context
from ti_pipeline.sage_dump.pipeline import process_stream

CTX = rule_context()
UNDECODABLE = struct.pack("<i", 12) + b"\x99a\x00" + b"\x00\x00\x00\x00" + b"\x00"


def token(i: int) -> bytes:
    return bson.encode({"_id": f"198.51.100.{i}", "response": "malware", "value": {"type": "IPv4"}})


def run(data: bytes, workers: int, block_bytes: int = 64):
    acc, quarantine, rows = Accounting(), [], []
    for result in process_stream(io.BytesIO(data), "TOKENS", "mem://t.bson", CTX, workers=workers, block_bytes=block_bytes):
        acc.merge(result.accounting)
        quarantine += result.quarantine
        rows += result.rows.get("ioc_ips", [])
    return acc, quarantine, rows


@pytest.mark.parametrize("workers", [1, 2])
def test_every_document_is_accounted_in_file_order(workers):
    docs = [token(i) for i in range(1, 41)]
    bad_at = len(b"".join(docs[:20]))
    data = b"".join(docs[:20]) + UNDECODABLE + b"".join(docs[20:]) + token(99)[:9]
    acc, quarantine, rows = run(data, workers)
    assert [r["address"] for r in rows] == [f"198.51.100.{i}" for i in range(1, 41)]
    assert acc.as_dict() == {
        "read": 42, "written": 40, "filtered": 0, "rejected": 2, "unaccounted": 0,
        "rejected.torn_document": 1, "rejected.undecodable_document": 1,
    }
    assert [(q.reason.split(":")[0], q.offset) for q in quarantine] == [
        ("undecodable_document", bad_at),
        ("torn_document (9 bytes not readable)", len(data) - 9),
    ]
    assert quarantine[0].excerpt == UNDECODABLE.hex()


def test_rejected_document_keeps_its_offset_and_bytes():
    bad = bson.encode({"_id": "nope", "response": "malware", "value": {"type": "IPv4"}})
    data = token(1) + bad + token(2)
    acc, quarantine, _ = run(data, workers=1, block_bytes=1 << 20)
    assert acc.rejected == {"invalid_token_value:IPV4": 1}
    assert quarantine[0].offset == len(token(1)) and quarantine[0].excerpt == bad.hex()


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_gzip_keeps_the_whole_documents_before_the_cut(workers):
    docs = [token(i) for i in range(1, 201)]
    data = b"".join(docs)
    packed = gzip.compress(data, mtime=0)
    cut = packed[: len(packed) * 2 // 3]
    decoded = zlib.decompressobj(31).decompress(cut)  # what the cut file still holds
    whole = 0
    while whole < len(docs) and len(b"".join(docs[: whole + 1])) <= len(decoded):
        whole += 1
    assert 0 < whole < 200
    acc, quarantine, rows = run_stream(GzipStream(io.BytesIO(cut), chunk_bytes=256), workers)
    assert [r["address"] for r in rows] == [f"198.51.100.{i}" for i in range(1, whole + 1)]
    assert acc.as_dict() == {"read": whole + 1, "written": whole, "filtered": 0, "rejected": 1, "unaccounted": 0,
                             "rejected.truncated_gzip": 1}
    offset = len(b"".join(docs[:whole]))
    partial = len(decoded) - offset
    assert [(q.offset, q.reason) for q in quarantine] == [
        (offset, f"truncated_gzip: the file ends inside a gzip member, at compressed byte {len(cut)} "
                 f"({partial} bytes not readable)")]
    assert quarantine[0].excerpt == decoded[offset:][:512].hex()


def test_a_file_that_is_not_gzip_is_one_quarantined_record():
    data = b"".join(token(i) for i in range(1, 11))
    acc, quarantine, rows = run_stream(GzipStream(io.BytesIO(data)), workers=1)
    assert rows == []
    assert acc.as_dict() == {"read": 1, "written": 0, "filtered": 0, "rejected": 1, "unaccounted": 0, "rejected.not_gzip": 1}
    assert [(q.offset, q.reason) for q in quarantine] == [
        (0, f"not_gzip: no gzip magic bytes, at compressed byte 0 ({len(data)} bytes not readable)")]


def run_stream(stream, workers: int):
    acc, quarantine, rows = Accounting(), [], []
    for result in process_stream(stream, "TOKENS", "mem://t.bson.gz", CTX, workers=workers, block_bytes=1024):
        acc.merge(result.accounting)
        quarantine += result.quarantine
        rows += result.rows.get("ioc_ips", [])
    return acc, quarantine, rows


@pytest.mark.parametrize("collection", ["TOKENS", "file_rep"])
def test_a_local_file_read_by_the_workers_gives_what_one_process_gives(tmp_path, collection):
    """A local .bson goes to the workers as slices they read themselves: same rows, accounting and
    quarantine (offsets, reasons, excerpts) as one process reading the stream."""
    from ti_pipeline.sample_data.sage import file_rep_docs

    docs = [token(i) for i in range(1, 300)] if collection == "TOKENS" else [bson.encode(d) for d in file_rep_docs("t", 300, seed=3)]
    data = b"".join(docs[:100]) + UNDECODABLE + b"".join(docs[100:]) + docs[0][:9]
    path = tmp_path / "c.bson"
    path.write_bytes(b"prefix" + data)

    def results(workers: int, stream):
        return [(r.rows, r.accounting.as_dict(), r.quarantine, r.bytes_read)
                for r in process_stream(stream, collection, "file:///c.bson", CTX, workers=workers, block_bytes=1024)]

    expected = results(1, io.BytesIO(data))
    with open(path, "rb") as f:
        f.seek(len(b"prefix"))
        assert results(2, f) == expected
    assert len(expected) > 5 and any(q for _, _, q, _ in expected)
