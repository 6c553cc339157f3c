import gzip
import hashlib
import io
import os
import zlib

import bson
import pytest

from ti_pipeline.sage_dump.bson_stream import (
    Block,
    Corrupt,
    FileChanged,
    GzipStream,
    LocalFile,
    UnreadableStream,
    iter_blocks,
)


def _docs(n: int) -> list[bytes]:
    return [bson.encode({"_id": f"doc{i}", "pad": "x" * (i % 50)}) for i in range(n)]


@pytest.mark.parametrize("block_bytes", [1, 64, 1000, 1 << 20])
def test_blocks_cut_exactly_at_document_boundaries(block_bytes):
    docs = _docs(200)
    items = list(iter_blocks(io.BytesIO(b"".join(docs)), block_bytes))
    assert all(isinstance(i, Block) for i in items)
    assert b"".join(i.data for i in items) == b"".join(docs)
    assert sum(i.documents for i in items) == 200
    offset, ids = 0, []
    for item in items:
        assert item.offset == offset
        bounds = [*item.starts, len(item.data)]
        ids += [bson.decode(item.data[s:e])["_id"] for s, e in zip(bounds, bounds[1:], strict=False)]
        offset += len(item.data)
    assert ids == [f"doc{i}" for i in range(200)]


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


def _packed_docs(n: int = 400) -> tuple[bytes, bytes]:
    data = b"".join(bson.encode({"_id": i, "r": hashlib.sha256(str(i).encode()).hexdigest()}) for i in range(n))
    return data, gzip.compress(data, mtime=0)


def _read_all(stream: GzipStream, size: int = 1000) -> tuple[bytes, UnreadableStream | None]:
    out = bytearray()
    try:
        while chunk := stream.read(size):
            out += chunk
    except UnreadableStream as exc:
        return bytes(out), exc
    return bytes(out), None


@pytest.mark.parametrize("chunk_bytes", [1, 100, 1 << 16])
def test_gzip_stream_reads_members_and_padding_like_gzip(chunk_bytes):
    data, packed = _packed_docs()
    raw = packed + gzip.compress(b"second member", mtime=0) + b"\0" * 10
    assert _read_all(GzipStream(io.BytesIO(raw), chunk_bytes)) == (data + b"second member", None)
    assert gzip.decompress(raw) == data + b"second member"


def test_gzip_stream_corrupt_data_keeps_every_byte_decoded_before_it():
    data, packed = _packed_docs()
    at = len(packed) // 2
    damaged = packed[:at] + b"\xff" * 64 + packed[at + 64 :]
    reference, inflate = bytearray(), zlib.decompressobj(31)  # what byte-by-byte decoding reaches
    for stop in range(len(damaged)):
        try:
            reference += inflate.decompress(damaged[stop : stop + 1])
        except zlib.error as exc:
            message = str(exc)
            break
    out, error = _read_all(GzipStream(io.BytesIO(damaged), 4096))
    # Deflate notices the damage a little after it starts: what came before it is all there.
    assert out == bytes(reference) and data.startswith(out[: len(data) // 3])
    assert (error.reason, error.unread_bytes) == (f"corrupt_gzip: {message}, at compressed byte {stop}", len(damaged) - stop)


def test_gzip_stream_truncated_and_not_gzip():
    data, packed = _packed_docs()
    out, error = _read_all(GzipStream(io.BytesIO(packed[:-20])))
    assert data.startswith(out) and len(out) > len(data) - 1000
    assert (error.reason, error.unread_bytes) == (
        f"truncated_gzip: the file ends inside a gzip member, at compressed byte {len(packed) - 20}", 0)
    out, error = _read_all(GzipStream(io.BytesIO(data), 100))
    assert (out, error.reason, error.unread_bytes) == (b"", "not_gzip: no gzip magic bytes, at compressed byte 0", len(data))
    assert _read_all(GzipStream(io.BytesIO(b""))) == (b"", None)


def test_damaged_gzip_ends_the_blocks_with_one_corrupt():
    data, packed = _packed_docs(100)
    docs = list(bson.decode_file_iter(io.BytesIO(data)))
    cut = packed[: len(packed) // 2]
    items = list(iter_blocks(GzipStream(io.BytesIO(cut)), 512))
    *blocks, corrupt = items
    kept = b"".join(b.data for b in blocks)
    assert kept == b"".join(bson.encode(d) for d in docs[: sum(b.documents for b in blocks)])
    decoded = zlib.decompressobj(31).decompress(cut)
    assert corrupt == Corrupt(len(kept), f"truncated_gzip: the file ends inside a gzip member, at compressed byte {len(cut)}",
                              decoded[len(kept):][:512], len(decoded) - len(kept))


def test_only_a_regular_file_opened_by_path_is_read_by_the_workers(tmp_path):
    path = tmp_path / "c.bson"
    path.write_bytes(b"".join(_docs(3)))
    with open(path, "rb") as f:
        f.seek(7)
        local = LocalFile.of(f)
    assert local is not None and local.path == str(path) and local.base == 7
    assert LocalFile.of(io.BytesIO(b"")) is None
    with open(path, "rb") as f:
        assert LocalFile.of(GzipStream(f)) is None
    r, w = os.pipe()
    with os.fdopen(r, "rb") as pipe, os.fdopen(w, "wb"):
        assert LocalFile.of(pipe) is None


def test_a_slice_reads_the_bytes_of_its_block_and_only_those(tmp_path):
    docs = _docs(300)
    path = tmp_path / "c.bson"
    path.write_bytes(b"junk" + b"".join(docs))
    with open(path, "rb") as f:
        f.seek(4)
        local = LocalFile.of(f)
        blocks = list(iter_blocks(f, 1000))
    assert len(blocks) > 3
    for block in blocks:
        read = local.slice(block).read()
        assert (read.offset, read.data, read.documents, read.starts) == (block.offset, block.data, block.documents, block.starts)


def test_a_slice_of_a_file_that_changed_since_the_cut_is_refused(tmp_path):
    docs = _docs(40)
    path = tmp_path / "c.bson"
    path.write_bytes(b"".join(docs))
    with open(path, "rb") as f:
        local = LocalFile.of(f)
        block = list(iter_blocks(f, 1 << 20))[0]
    piece = local.slice(block)
    stat = path.stat()
    # Same size and times, other boundaries: the documents' lengths no longer match the cut's.
    shifted = b"".join([docs[1], docs[0], *docs[2:]])
    assert len(shifted) == stat.st_size and shifted != path.read_bytes()
    path.write_bytes(shifted)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(FileChanged, match="changed while it was read"):
        piece.read()
    path.write_bytes(b"".join(docs) + b"more")  # another size
    with pytest.raises(FileChanged):
        piece.read()
