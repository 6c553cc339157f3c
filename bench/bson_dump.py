"""Benchmark of the Sage file_rep path against a plain pymongo decode of the same file.

For a generated mongodump file of --size-mb it measures, in the same run:
  * plain:  ``bson.decode_file_iter`` over the file, nothing else (the reference decoder);
  * path:   the whole file_rep path the asset runs (read, cut blocks, decode in the process pool,
            rules, upsert into the warehouse, quarantine), in a child process;
and reports MB/s and documents/s per CPU-second (user+sys of the process and its workers), the
ratio path/plain, and peak RSS of the reading process and of the largest worker at 1x and 4x size.

    python bench/bson_dump.py --size-mb 1024 [--warehouse-url mysql+pymysql://root@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bson

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def make_dump(size_mb: int) -> Path:
    """A deterministic file_rep dump of about ``size_mb`` MB (cached under bench/out)."""
    from ti_pipeline.sample_data.sage import file_rep_docs

    path = OUT / f"file_rep_{size_mb}mb.bson"
    if path.exists():
        return path
    OUT.mkdir(exist_ok=True)
    target = size_mb * 1_000_000
    written, round_ = 0, 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        while written < target:
            for doc in file_rep_docs(f"b{round_}", 5000, seed=round_):
                data = bson.encode(doc)
                out.write(data)
                written += len(data)
                if written >= target:
                    break
            round_ += 1
    tmp.rename(path)
    return path


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def plain_pass(path: Path) -> dict:
    cpu, wall = cpu_seconds(), time.perf_counter()
    with open(path, "rb") as f:
        docs = sum(1 for _ in bson.decode_file_iter(f))
    return {"docs": docs, "cpu_s": cpu_seconds() - cpu, "wall_s": time.perf_counter() - wall}


def run_path(path: Path, warehouse_url: str, workers: int) -> dict:
    """The asset's path in this (child) process; prints its figures as JSON."""
    from ti_pipeline.core import migrations
    from ti_pipeline.core.objectstore import LocalStore
    from ti_pipeline.core.warehouse import Warehouse
    from ti_pipeline.sage_dump.load import DumpOptions, load_dump_file

    migrations.upgrade(warehouse_url)
    warehouse = Warehouse(warehouse_url)
    store = LocalStore(path.parent)
    cpu, wall = cpu_seconds(), time.perf_counter()
    acc = load_dump_file(store, path.name, "file_rep", warehouse, quarantine_key=("sage_dump/ioc_file_hashes", "r01"), options=DumpOptions(workers=workers))
    figures = {
        "docs": acc.read,
        "written": acc.written,
        "unaccounted": acc.unaccounted,
        "cpu_s": cpu_seconds() - cpu,
        "wall_s": time.perf_counter() - wall,
        "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    warehouse.dispose()
    return figures


def path_in_child(path: Path, warehouse_url: str, workers: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--warehouse-url", warehouse_url, "--workers", str(workers)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_warehouse(base_url: str | None, tag: str) -> str:
    if base_url:
        import sqlalchemy as sa

        from ti_pipeline.core import migrations, schema

        migrations.upgrade(base_url)
        engine = sa.create_engine(base_url)
        with engine.begin() as conn:
            for table in (schema.ioc_file_hashes, schema.quarantine):
                conn.execute(table.delete())
        engine.dispose()
        return base_url
    return f"sqlite:///{tempfile.mkdtemp(prefix=f'bench-{tag}-')}/warehouse.sqlite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the 4x file; the 1x file is a quarter")
    parser.add_argument("--warehouse-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_path(args.child, args.warehouse_url, args.workers)))
        return

    big = make_dump(args.size_mb)
    small = make_dump(args.size_mb // 4)
    mb = big.stat().st_size / 1e6
    plain = plain_pass(big)
    path = path_in_child(big, fresh_warehouse(args.warehouse_url, "4x"), args.workers)
    path_small = path_in_child(small, fresh_warehouse(args.warehouse_url, "1x"), args.workers)
    assert path["unaccounted"] == 0 and path["docs"] == plain["docs"], (path, plain)

    def rate(r: dict) -> tuple[float, float]:
        return mb / r["cpu_s"], r["docs"] / r["cpu_s"]

    p_mb, p_docs = rate(plain)
    w_mb, w_docs = rate(path)
    report = {
        "file_mb": round(mb, 1),
        "documents": plain["docs"],
        "workers": args.workers,
        "warehouse": (args.warehouse_url or "sqlite").split("://")[0],
        "plain_decode_file_iter": {"mb_per_cpu_s": round(p_mb, 1), "docs_per_cpu_s": round(p_docs), "wall_s": round(plain["wall_s"], 2)},
        "file_rep_path": {"mb_per_cpu_s": round(w_mb, 1), "docs_per_cpu_s": round(w_docs), "wall_s": round(path["wall_s"], 2),
                          "mb_per_wall_s": round(mb / path["wall_s"], 1), "written": path["written"]},
        "ratio_path_over_plain_per_cpu_s": round(w_mb / p_mb, 3),
        "peak_rss_mb": {
            "1x": {"main": round(path_small["rss_main_mb"]), "worker": round(path_small["rss_worker_mb"])},
            "4x": {"main": round(path["rss_main_mb"]), "worker": round(path["rss_worker_mb"])},
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
