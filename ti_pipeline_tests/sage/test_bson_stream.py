import io

import bson
import pytest

from ti_pipeline.sage.bson_stream import Block, Corrupt, document_offsets, iter_blocks


def _docs(n: int) -> list[bytes]:
    return [bson.encode({"_id": f"doc{i}", "pad": "x" * (i % 50)}) for i in range(n)]


@pytest.mark.parametrize("block_bytes", [1, 64, 1000, 1 << 20])
def test_blocks_cut_exactly_at_document_boundaries(block_bytes):
    docs = _docs(200)
    items = list(iter_blocks(io.BytesIO(b"".join(docs)), block_bytes))
    assert all(isinstance(i, Block) for i in items)
    assert b"".join(i.data for i in items) == b"".join(docs)
    assert sum(i.documents for i in items) == 200
    offset = 0
    for item in items:
        assert item.offset == offset
        assert [bson.decode(item.data[s:e])["_id"] for s, e in document_offsets(item.data)]
        offset += len(item.data)


def test_torn_last_document_is_reported_with_its_offset():
    docs = _docs(10)
    whole = b"".join(docs[:9])
    items = list(iter_blocks(io.BytesIO(whole + docs[9][:7]), 64))
    *blocks, torn = items
    assert sum(b.documents for b in blocks) == 9
    assert torn == Corrupt(len(whole), "torn_document", docs[9][:7], 7)


def test_impossible_length_stops_the_file_without_guessing():
    docs = _docs(5)
    garbage = b"\xff\xff\xff\x7f" + b"rest of the file"
    items = list(iter_blocks(io.BytesIO(b"".join(docs[:3]) + garbage + b"".join(docs[3:])), 1 << 20))
    block, corrupt = items
    assert block.documents == 3
    assert isinstance(corrupt, Corrupt)
    assert corrupt.reason == f"invalid_document_length:{0x7FFFFFFF}"
    assert corrupt.offset == len(b"".join(docs[:3]))
    assert corrupt.unread_bytes == len(garbage) + len(b"".join(docs[3:]))


def test_missing_terminator_is_corrupt():
    doc = bytearray(bson.encode({"a": 1}))
    doc[-1] = 1
    (corrupt,) = list(iter_blocks(io.BytesIO(bytes(doc))))
    assert corrupt.reason == "missing_document_terminator" and corrupt.offset == 0


def test_empty_file_yields_nothing():
    assert list(iter_blocks(io.BytesIO(b""))) == []
