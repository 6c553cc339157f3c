"""Benchmark of the Sage file_rep path against a plain pymongo decode of the same file.

For a generated mongodump file of --size-mb (the real file_rep mix: ``sample_data.sage.file_rep_docs``)
it measures, in one run, CPU-seconds (user + sys) of:
  * plain:    ``bson.decode_file_iter`` over the file, nothing else (the reference decoder);
  * kernel:   ``sage_dump.pipeline.process_stream`` in this process (cut, screen, decode, rules; no writes);
  * pool:     the same with the step's process pool (``DumpOptions().workers``): this process cuts, the
              workers read, screen and decode; its CPU and its workers' apart;
  * load:     ``sage_dump.load.load_dump_file`` into a fresh SQLite warehouse (pool, upserts, quarantine);
  * asset:    ``dagster asset materialize --select sage_dump/ioc_file_hashes --partition r01`` in a fresh
              process, counted with its pool workers (RUSAGE_CHILDREN around it), minus the same command
              on an empty shard (r02: an empty file_rep.bson), which is reported apart as the fixed cost;
and reports MB/s and documents/s per CPU-second, each ratio to plain, and the peak RSS of the largest
process of the materialization. ``breakdown`` says where the materialization's CPU goes beyond the kernel:
the pool (``worker_start_each``: a fresh interpreter importing what a worker imports, times the
workers), the warehouse writes, and Dagster's part (the materialization less the load).

    flock /tmp/ti_bench.lock python bench/bson_dump.py --size-mb 256 [--warehouse-url mysql+pymysql://root@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bson

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
ASSET = "sage_dump/ioc_file_hashes"


def make_dump(size_mb: int) -> Path:
    """A deterministic file_rep dump of about ``size_mb`` MB (cached under bench/out)."""
    from ti_pipeline.sample_data.sage import file_rep_docs

    path = OUT / f"file_rep_mix_{size_mb}mb.bson"
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


def own_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def children_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def plain_pass(path: Path) -> dict:
    cpu, wall = own_cpu(), time.perf_counter()
    with open(path, "rb") as f:
        docs = sum(1 for _ in bson.decode_file_iter(f))
    return {"docs": docs, "cpu_s": own_cpu() - cpu, "wall_s": time.perf_counter() - wall}


def kernel_pass(path: Path) -> dict:
    """The pure pipeline in this process: what a worker does, without the warehouse."""
    from ti_pipeline.core.accounting import Accounting
    from ti_pipeline.sage_dump.load import DumpOptions, rule_context
    from ti_pipeline.sage_dump.pipeline import process_stream

    acc = Accounting()
    options = DumpOptions(workers=1)
    cpu, wall = own_cpu(), time.perf_counter()
    with open(path, "rb") as f:
        for result in process_stream(f, "file_rep", path.name, rule_context(), workers=1, block_bytes=options.block_mib << 20):
            acc.merge(result.accounting)
    return {"docs": acc.read, "written": acc.written, "cpu_s": own_cpu() - cpu, "wall_s": time.perf_counter() - wall,
            "accounting": acc.as_dict()}


def pool_pass(path: Path) -> dict:
    """process_stream with the pool a step uses: this process's CPU and its workers' apart."""
    from ti_pipeline.sage_dump.load import DumpOptions, rule_context
    from ti_pipeline.sage_dump.pipeline import process_stream

    options = DumpOptions()
    own, kids, wall = own_cpu(), children_cpu(), time.perf_counter()
    with open(path, "rb") as f:
        for _ in process_stream(f, "file_rep", path.name, rule_context(), workers=options.workers,
                                block_bytes=options.block_mib << 20):
            pass
    return {"parent_cpu_s": own_cpu() - own, "workers_cpu_s": children_cpu() - kids, "wall_s": time.perf_counter() - wall,
            "workers": options.workers or os.cpu_count()}


def load_pass(path: Path, home: Path) -> dict:
    """load_dump_file into a fresh SQLite warehouse (opened and migrated before the clock starts)."""
    from ti_pipeline.core.objectstore import open_store
    from ti_pipeline.core.warehouse import Warehouse
    from ti_pipeline.sage_dump.load import load_dump_file

    warehouse = Warehouse(f"sqlite:///{home}/load_pass.sqlite")
    warehouse.ensure_schema()
    store = open_store(path.parent.as_uri())
    own, kids, wall = own_cpu(), children_cpu(), time.perf_counter()
    acc = load_dump_file(store, path.name, "file_rep", warehouse, quarantine_key=("bench", "r01"))
    figures = {"parent_cpu_s": own_cpu() - own, "workers_cpu_s": children_cpu() - kids, "wall_s": time.perf_counter() - wall,
               "written": acc.written}
    warehouse.dispose()
    return figures


def worker_start() -> float:
    """CPU of a fresh interpreter importing what a pool worker imports (the spawn itself adds a little)."""
    kids = children_cpu()
    subprocess.run([sys.executable, "-c", "import ti_pipeline.sage_dump.pipeline"], check=True, cwd=HERE.parent)
    return children_cpu() - kids


def materialize(root: Path, shard: str, warehouse_url: str, home: Path) -> dict:
    """One partition through the Dagster CLI in a fresh process; CPU of it and its pool workers."""
    env = {**os.environ, "TI_SAGE_DUMP_URI": f"file://{root}", "TI_WAREHOUSE_URL": warehouse_url,
           "TI_DATA_DIR": str(home / "data"), "DAGSTER_HOME": str(home / "dagster")}
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "asset", "materialize", "-m", "ti_pipeline.definitions", "--select", ASSET, "--partition", shard]
    cpu, wall = children_cpu(), time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    figures = {"cpu_s": children_cpu() - cpu, "wall_s": time.perf_counter() - wall,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    if done.returncode != 0 or "RUN_SUCCESS" not in done.stderr + done.stdout:
        raise SystemExit(f"materialization of {shard} failed:\n{done.stderr[-4000:]}")
    return figures


def fresh_warehouse(base_url: str | None, home: Path) -> str:
    if not base_url:
        return f"sqlite:///{home}/warehouse.sqlite"
    import sqlalchemy as sa

    from ti_pipeline.core import migrations, schema

    migrations.upgrade(base_url)
    engine = sa.create_engine(base_url)
    with engine.begin() as conn:
        for table in (schema.ioc_file_hashes, schema.quarantine, schema.partition_locks):
            conn.execute(table.delete())
    engine.dispose()
    return base_url


def dump_root(path: Path, home: Path) -> Path:
    """r01 holds the file (a hard link, no copy), r02 an empty file_rep.bson (the fixed cost)."""
    root = home / "dump"
    for shard in ("r01", "r02"):
        (root / shard / "cybereason").mkdir(parents=True)
    target = root / "r01" / "cybereason" / "file_rep.bson"
    try:
        os.link(path, target)
    except OSError:
        shutil.copyfile(path, target)
    (root / "r02" / "cybereason" / "file_rep.bson").write_bytes(b"")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--warehouse-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()

    path = make_dump(args.size_mb)
    mb = path.stat().st_size / 1e6
    plain = plain_pass(path)
    kernel = kernel_pass(path)
    pool = pool_pass(path)
    start = min(worker_start() for _ in range(3))
    with tempfile.TemporaryDirectory(prefix="bench-dump-") as tmp:
        home = Path(tmp)
        load = load_pass(path, home)
        root = dump_root(path, home)
        url = fresh_warehouse(args.warehouse_url, home)
        empty = materialize(root, "r02", url, home)
        asset = materialize(root, "r01", url, home)
    assert kernel["docs"] == plain["docs"], (kernel, plain)
    asset_cpu = asset["cpu_s"] - empty["cpu_s"]
    assert load["written"] == kernel["written"], (load, kernel)
    pool_cpu = pool["parent_cpu_s"] + pool["workers_cpu_s"]
    load_cpu = load["parent_cpu_s"] + load["workers_cpu_s"]

    def rate(cpu_s: float) -> dict:
        return {"cpu_s": round(cpu_s, 2), "mb_per_cpu_s": round(mb / cpu_s, 1), "docs_per_cpu_s": round(plain["docs"] / cpu_s),
                "ratio_to_plain": round(plain["cpu_s"] / cpu_s, 3)}

    report = {
        "file_mb": round(mb, 1),
        "documents": plain["docs"],
        "kb_per_document": round(mb * 1000 / plain["docs"], 2),
        "warehouse": (args.warehouse_url or "sqlite").split("://")[0],
        "load_average": os.getloadavg(),
        "plain_decode_file_iter": rate(plain["cpu_s"]),
        "kernel_inline": {**rate(kernel["cpu_s"]), "accounting": kernel["accounting"]},
        "pool": {**rate(pool_cpu), "parent_cpu_s": round(pool["parent_cpu_s"], 2),
                 "workers_cpu_s": round(pool["workers_cpu_s"], 2), "workers": pool["workers"], "wall_s": round(pool["wall_s"], 1)},
        "load_into_sqlite": {**rate(load_cpu), "parent_cpu_s": round(load["parent_cpu_s"], 2),
                             "workers_cpu_s": round(load["workers_cpu_s"], 2), "wall_s": round(load["wall_s"], 1)},
        "materialization_minus_empty": {**rate(asset_cpu), "wall_s": round(asset["wall_s"], 1),
                                        "peak_rss_mb_largest_process": round(asset["peak_rss_mb"])},
        "empty_partition_fixed_cost": {"cpu_s": round(empty["cpu_s"], 2), "wall_s": round(empty["wall_s"], 1)},
        "breakdown_cpu_s": {
            "kernel": round(kernel["cpu_s"], 2),
            "pool_beyond_kernel": round(pool_cpu - kernel["cpu_s"], 2),
            "of_which_worker_start": round(start * pool["workers"], 2),
            "worker_start_each": round(start, 2),
            "warehouse_writes": round(load_cpu - pool_cpu, 2),
            "dagster_step_beyond_load": round(asset_cpu - load_cpu, 2),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
