import io
import struct

import bson
import pytest

from ti_pipeline.accounting import Accounting
from ti_pipeline.sage.pipeline import process_stream

UNDECODABLE = struct.pack("<i", 12) + b"\x99a\x00" + b"\x00\x00\x00\x00" + b"\x00"


def token(i: int) -> bytes:
    return bson.encode({"_id": f"198.51.100.{i}", "response": "malware", "value": {"type": "IPv4"}})


def run(data: bytes, workers: int, block_bytes: int = 64):
    acc, quarantine, rows = Accounting(), [], []
    for result in process_stream(io.BytesIO(data), "TOKENS", "mem://t.bson", workers=workers, block_bytes=block_bytes):
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
    assert acc.rejected == {"invalid_token_value": 1}
    assert quarantine[0].offset == len(token(1)) and quarantine[0].excerpt == bad.hex()
