"""How far the Sage dump materialization could go if the document cut + top-level screen were compiled C.

A measurement, not the pipeline: ``dump_ceiling/screen_c.c`` (compiled here with gcc, called through
ctypes) cuts a file_rep dump (bson_dump.py's generator) and makes screen.py's decision per document; the
rest is the pipeline's own code: ``bson.decode`` + ``file_rep`` of the documents the screen leaves, and
the SQLite writes ``load_dump_file`` makes per 4 MiB block. It first checks that the C screen selects
exactly the documents screen.py does, then times each part per round (CPU-s, ``time.process_time``) and
the whole prototype in one process, against a plain ``bson.decode_file_iter`` pass. The slim estimate
stands for a C extractor handing over only the fields file_rep reads: a full C walk of each selected
document, then decode + rule of a copy holding only those fields (checked to give the same rows).

    flock /tmp/ti_bench.lock .venv/bin/python bench/dump_ceiling.py --size-mb 256 --rounds 5
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson
import bson_dump  # this script's directory is on sys.path
import numpy as np

from ti_pipeline.core import schema
from ti_pipeline.core.accounting import QuarantineRecord
from ti_pipeline.core.warehouse import Warehouse
from ti_pipeline.sage_dump.bson_stream import CODEC, MAX_DOCUMENT, MIN_DOCUMENT, iter_blocks
from ti_pipeline.sage_dump.load import TABLES, rule_context
from ti_pipeline.sage_dump.pipeline import EXCERPT_BYTES
from ti_pipeline.sage_dump.rules import Filtered, Rejected, RuleContext, file_rep
from ti_pipeline.sage_dump.screen import _FILE_REP, SCREENS, _decode_elements, _file_stub, _outcome

BLOCK = 4 << 20  # DumpOptions().block_mib
TABLE = "ioc_file_hashes"
SOURCE = "file://bench/dump_ceiling"  # the quarantine records' source (its value costs nothing)
NEED_KEY, CORRUPT = 1, 3  # run() statuses of screen_c.c that need the caller
Piece = tuple[list[dict], list[QuarantineRecord], int]  # a block's rows, quarantine and rows written


class State(ctypes.Structure):
    """screen_c.c's State (every field 8 bytes)."""

    _fields_ = [("buf", ctypes.c_void_p), ("out", ctypes.c_void_p)] + [
        (name, ctypes.c_int64)
        for name in "len pos n_out n_docs n_code_not_1 n_not_imported key_kind code_off code_len"
        " resp_off resp_len verdict_kind cls_off cls_len pending".split()
    ]


def compile_screen(home: Path) -> ctypes.CDLL:
    """screen_c.c built for this machine, so that the measurement needs nothing but gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("dump_ceiling.py needs gcc to compile bench/dump_ceiling/screen_c.c")
    library = home / "screen_c.so"
    source = Path(__file__).resolve().parent / "dump_ceiling" / "screen_c.c"
    subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-o", library, source, "-lm"], check=True)
    lib = ctypes.CDLL(str(library))
    lib.run.argtypes = [ctypes.POINTER(State)]
    lib.answer.argtypes = [ctypes.POINTER(State), ctypes.c_int]
    lib.deep_walk.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.deep_walk.restype = ctypes.c_int64
    return lib


def c_screen(
    lib: ctypes.CDLL, st: State, buf: bytes | bytearray, length: int, ctx: RuleContext
) -> np.ndarray:
    """Offsets of the documents of ``buf[:length]`` to decode (st counts the others; st.pos: the first
    byte not cut). A key the C cache lacks is decided here as screen.py decides it: the rule on a stub."""
    view = memoryview(buf)
    out = np.empty(length // MIN_DOCUMENT + 1, np.int64)  # room for any cut: pages never written cost nothing
    st.buf, st.out, st.len = np.frombuffer(buf, np.uint8).ctypes.data, out.ctypes.data, length
    st.pos, st.n_out, st.pending = 0, 0, -1

    def part(offset: int, size: int) -> bytes | None:
        return None if offset < 0 else bytes(view[offset : offset + size])

    while (status := lib.run(ctypes.byref(st))) == NEED_KEY:
        if st.key_kind == ord("C"):
            code = part(st.code_off, st.code_len)
            outcome = _outcome(file_rep, lambda c=code: {"value": _decode_elements(c)}, ctx, _FILE_REP, 1)
        else:
            stub = (part(st.resp_off, st.resp_len), st.verdict_kind or None, part(st.cls_off, st.cls_len))
            outcome = _outcome(file_rep, lambda s=stub: _file_stub(*s), ctx, _FILE_REP, 2)
        lib.answer(ctypes.byref(st), outcome)
    if status == CORRUPT:
        raise SystemExit(f"not a document at byte {st.pos} of the piece walked")
    return out[: st.n_out]


def c_walk(lib: ctypes.CDLL, data: bytes, ctx: RuleContext) -> tuple[np.ndarray, State]:
    """The C cut + screen over the whole file in memory, its cache cold."""
    lib.reset_cache()
    st = State()
    selected = c_screen(lib, st, data, len(data), ctx)
    if st.pos != len(data):
        raise SystemExit(f"a torn document at byte {st.pos}")
    return selected, st


def numpy_screen(path: Path, ctx: RuleContext) -> tuple[np.ndarray, list[int]]:
    """screen.py's decision, block by block as the pipeline cuts: offsets to decode, count per outcome."""
    selected, counts = [], np.zeros(len(_FILE_REP), np.int64)
    with open(path, "rb") as f:
        for block in iter_blocks(f, BLOCK):
            starts = np.frombuffer(block.starts, np.int64)
            outcome = SCREENS["file_rep"](block.data, starts, np.append(starts[1:], len(block.data)), ctx)
            counts += np.bincount(outcome, minlength=len(_FILE_REP))
            selected.append(block.offset + starts[outcome == 0])
    return np.concatenate(selected), counts.tolist()


def spans(data: bytes | bytearray, offsets: np.ndarray) -> list[list[int]]:
    """[start, end] of the documents at ``offsets``."""
    lengths = np.ndarray((len(data) - 3,), "<i4", data, 0, (1,))[offsets]
    return np.column_stack([offsets, offsets + lengths]).tolist()


def plain(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in bson.decode_file_iter(f))


def decode_only(data: bytes, parts: list[list[list[int]]]) -> None:
    view = memoryview(data)
    for part in parts:
        for start, end in part:
            bson.decode(view[start:end], CODEC)


def decode_rule(
    data: bytes | bytearray,
    part: list[list[int]],
    ctx: RuleContext,
    base: int = 0,
    slims: list[bytes] | None = None,
) -> Piece:
    """transform_block's loop over the documents the screen left (``slims``: decode these instead)."""
    view, rows, quarantine, written = memoryview(data), [], [], 0
    for i, (start, end) in enumerate(part):
        doc = bson.decode(view[start:end] if slims is None else slims[i], CODEC)
        try:
            produced = file_rep(doc, ctx)
        except Filtered:
            continue
        except Rejected as r:
            excerpt = bytes(view[start:end][:EXCERPT_BYTES]).hex()
            quarantine.append(QuarantineRecord(SOURCE, r.reason, base + start, excerpt))
        else:
            written += 1
            rows.extend(row for _, row in produced)
    return rows, quarantine, written


def fresh_warehouse(home: Path, name: str) -> Warehouse:
    warehouse = Warehouse(f"sqlite:///{home}/{name}.sqlite")
    warehouse.ensure_schema()
    return warehouse


def write(warehouse: Warehouse, pieces: list[Piece]) -> None:
    """What load_dump_file does with each block's result."""
    figures: Counter[str] = Counter()
    for rows, quarantine, _ in pieces:
        if rows:
            warehouse.upsert(TABLES[TABLE], rows, schema.MERGE_RULES[TABLE])
            figures.update(f"classification.{row['classification']}" for row in rows)
        warehouse.add_quarantine("sage_dump/ioc_file_hashes", "r01", quarantine)


def inline(
    lib: ctypes.CDLL, path: Path, ctx: RuleContext, warehouse: Warehouse, buf: bytearray
) -> tuple[int, int]:
    """The whole prototype in one process, as a step would run it: read 4 MiB at a time into ``buf``
    (a torn document carried over), C cut + screen, decode + rule, write. Documents cut, rows written."""
    lib.reset_cache()
    st, have, base, written = State(), 0, 0, 0
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(memoryview(buf)[have : have + BLOCK]):
            have += got
            piece = decode_rule(buf, spans(buf, c_screen(lib, st, buf, have, ctx)), ctx, base)
            write(warehouse, [piece])
            written += piece[2]
            buf[: have - st.pos] = buf[st.pos : have]
            base, have = base + st.pos, have - st.pos
    if have:
        raise SystemExit(f"a torn document at byte {base} of {path}")
    return st.n_docs, written


def slim(doc: dict) -> dict:
    """Only the fields file_rep reads, the scans cut to the detecting engines: what an extractor gives."""
    value = doc.get("value")
    if not isinstance(value, dict):
        return doc
    out = {
        k: doc[k] for k in ("response", "firstSeen", "lastUpdate", "vtClassifierV2Classification") if k in doc
    }
    if isinstance(verdict := out.get("vtClassifierV2Classification"), dict):
        out["vtClassifierV2Classification"] = {"classification": verdict.get("classification")}
    keep = ("response_code", "sha256", "sha1", "md5", "scan_date", "positives", "total")
    out["value"] = {k: value[k] for k in keep if k in value}
    if isinstance(scans := value.get("scans"), dict):
        detected = {e: s for e, s in scans.items() if isinstance(s, dict) and s.get("detected") is True}
        out["value"]["scans"] = {
            e: {"detected": True, "result": s.get("result")} for e, s in detected.items()
        }
    return out


def measure(lib: ctypes.CDLL, path: Path, home: Path, rounds: int) -> None:
    ctx = rule_context()
    data = path.read_bytes()
    selected, st = c_walk(lib, data, ctx)
    reference, counts = numpy_screen(path, ctx)
    c_counts = [len(selected), st.n_code_not_1, st.n_not_imported]
    if not np.array_equal(selected, reference) or counts != c_counts:
        raise SystemExit(f"the C screen differs from screen.py: outcomes {c_counts} against {counts}")
    cuts = np.searchsorted(selected, range(BLOCK, len(data), BLOCK))  # the documents per 4 MiB block
    parts = [spans(data, offsets) for offsets in np.split(selected, cuts)]
    every = [span for part in parts for span in part]
    slims = [bson.encode(slim(bson.decode(data[start:end], CODEC))) for start, end in every]
    rows = decode_rule(data, every, ctx)[0]
    if decode_rule(data, every, ctx, 0, slims)[0] != rows:
        raise SystemExit("the slim copies do not give the rows the documents give")
    address = np.frombuffer(data, np.uint8).ctypes.data
    buf = bytearray(BLOCK + MAX_DOCUMENT)  # inline's, allocated once as a long-lived worker would (20 MiB)
    times: dict[str, list[float]] = defaultdict(list)

    def timed(label: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.process_time()
        result = fn(*args)
        times[label].append(time.process_time() - start)
        return result

    for round_ in range(rounds):
        docs = timed("plain decode_file_iter", plain, path)
        timed("C walk", c_walk, lib, data, ctx)
        timed("decode selected", decode_only, data, parts)
        pieces = timed("decode + rule selected", lambda: [decode_rule(data, p, ctx) for p in parts])
        warehouse = fresh_warehouse(home, f"parts{round_}")
        timed("SQLite writes", write, warehouse, pieces)
        warehouse.dispose()
        warehouse = fresh_warehouse(home, f"inline{round_}")
        whole = timed("whole prototype inline", inline, lib, path, ctx, warehouse, buf)
        warehouse.dispose()
        elements = timed("slim: C deep walk", lib.deep_walk, address, selected.ctypes.data, len(selected))
        timed("slim: decode + rule", decode_rule, data, every, ctx, 0, slims)
        written = sum(piece[2] for piece in pieces)
        if not docs == st.n_docs == whole[0] or not len(rows) == written == whole[1] or elements < 0:
            raise SystemExit(f"counts differ: plain {docs}, C {st.n_docs}, inline {whole}, rows {written}")

    median = {label: statistics.median(values) for label, values in times.items()}
    base = median["plain decode_file_iter"]
    selected_mb = sum(end - start for start, end in every) / 1e6
    print(f"\n{len(data) / 1e6:.1f} MB, {docs} documents, {len(selected)} selected ({selected_mb:.1f} MB)")
    print(f"{len(rows)} rows; CPU-s over {rounds} rounds\n\n| part | median | min-max | share of plain |")
    print("|---|---:|---:|---:|")
    for label, values in times.items():
        mid, low, high = median[label], min(values), max(values)
        print(f"| {label} | {mid:.3f} | {low:.3f}-{high:.3f} | {mid / base:.2f} |")
    walk_writes = median["C walk"] + median["SQLite writes"]
    parts_sum = walk_writes + median["decode + rule selected"]
    slim_sum = walk_writes + median["slim: C deep walk"] + median["slim: decode + rule"]
    print("\nprojected ratio to plain (plain CPU-s / prototype CPU-s, medians):")
    print(f"- sum of parts (C walk + decode + rule + writes): {base / parts_sum:.2f}x")
    print(f"- whole prototype inline: {base / median['whole prototype inline']:.2f}x")
    print(f"- slim rows (C walk + C deep walk + slim decode + rule + writes): {base / slim_sum:.2f}x")
    print(f"\nload average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=256, help="of the generated file_rep dump")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--input", type=Path, help="a file_rep dump to measure instead of a generated one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dump-ceiling-") as tmp:
        home = Path(tmp)
        lib = compile_screen(home)
        bson_dump.OUT = home  # its generator, writing into this run's directory
        measure(lib, args.input or bson_dump.make_dump(args.size_mb), home, args.rounds)


if __name__ == "__main__":
    main()
