"""Benchmark one VT day's export against the bz2 floor it sits on, from the kernel to the materialization a user runs.

Writes (once; reused while the parameters are the same) a day of feed-sized v2 packages
(``sample_data/vt.py``'s ``write_feed_day``: bzip2 tar with one member, one allinfo report per line,
63 engines, ~8.5 KB a report, 40% with positives 0), then, in rounds so every path meets the same
load, measures CPU-seconds (process + children) of:

- ``python_bz2``      Python's ``bz2`` decompressing the packages to nowhere (the floor), one process
- ``python_bz2_x2``   the same in two processes at once, half the packages each: the floor at the pool's
                      parallelism (two decompressions at once share the caches, and on this 2-vCPU VM
                      each then gets less done per CPU-second)
- ``bzip2_dc``        ``bzip2 -dc < package > /dev/null`` for each package (CPU of the children)
- ``kernel_inline``   ``export_day`` in a fresh process, ``workers=1`` (imports before the clock)
- ``kernel_pool``     the same with the pool of 2 spawned workers (their start counted)
- ``materialize``     ``dagster asset materialize`` of the day in a fresh process, ``workers: 2``, minus
                      the same command on an empty day (``materialize_empty``, reported apart): what a
                      user's run costs beyond its fixed start-up

Each ratio is ``python_bz2`` CPU-s over the path's CPU-s in the same round; the table gives the median
and the spread over the rounds, with the load averages seen. Peak RSS of a pool worker is measured on
the day and on a day of half its packages (it must stay flat). Run it alone on the machine's cores:

    flock /tmp/ti_bench.lock .venv/bin/python bench/vt_export.py --packages 120 --reports 300 --rounds 3

``--code ROOT`` measures another checkout of ti_pipeline (e.g. ``git archive HEAD``) on the same input.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

DAY, HALF_DAY, EMPTY_DAY = date(2020, 11, 1), date(2020, 11, 3), date(2020, 11, 5)
KINDS = ("python_bz2", "python_bz2_x2", "kernel_inline", "kernel_pool", "materialize_empty", "materialize", "bzip2_dc")


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _process_cpu() -> float:
    return _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)


def _packages(feed: Path, day: date) -> list[Path]:
    return sorted(p for p in (feed / day.strftime("%Y%m%d")).iterdir() if p.is_file())


def _decompress(paths: list[Path]) -> int:
    import bz2

    total = 0
    for path in paths:
        with bz2.open(path, "rb") as f:
            while data := f.read(1 << 20):
                total += len(data)
    return total


def measure(kind: str, feed: Path, out: Path, day: date) -> dict:
    """One measurement in this fresh process; the modules it needs are imported before the clock starts."""
    paths = _packages(feed, day)
    result: dict = {"kind": kind, "packages": len(paths), "compressed_bytes": sum(p.stat().st_size for p in paths)}
    if kind == "python_bz2":
        start = _process_cpu()
        result["decompressed_bytes"] = _decompress(paths)
    elif kind == "python_bz2_x2":
        start = _process_cpu()
        children = []
        for half in (paths[0::2], paths[1::2]):
            if (pid := os.fork()) == 0:
                _decompress(half)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
    elif kind == "bzip2_dc":
        start = _process_cpu()
        for path in paths:
            with open(path, "rb") as src:
                subprocess.run(["bzip2", "-dc"], stdin=src, stdout=subprocess.DEVNULL, check=True)
    else:
        # What a Dagster step process holds before its first day: pandas (pyarrow imports it on first
        # use; Dagster already has) and the schema (SQLAlchemy; the warehouse resource has).
        import pandas  # noqa: F401
        import pyarrow.compute  # noqa: F401
        import pyarrow.parquet  # noqa: F401

        import ti_pipeline.core.schema  # noqa: F401
        from ti_pipeline.core.objectstore import LocalStore
        from ti_pipeline.vt_feed.export import ExportOptions, PackagePool, export_day

        workers = 1 if kind == "kernel_inline" else 2
        start = _process_cpu()
        with PackagePool(workers) as pool:
            summary = export_day(LocalStore(feed), LocalStore(out), day, pool, ExportOptions(workers=workers))
        acc = summary.accounting
        result.update(read=acc.read, written=acc.written, unaccounted=acc.unaccounted,
                      decompressed_bytes=summary.figures["bytes_decompressed"],
                      worker_peak_rss_mib=summary.worker_peak_rss_kib / 1024)
    result["cpu_s"] = _process_cpu() - start
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


class Bench:
    def __init__(self, workdir: Path, code: Path, bytecode_cache: Path | None):
        self.workdir, self.code = workdir, code
        self.feed, self.data = workdir / "feed", workdir / "data"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "TI_DATA_DIR": str(self.data),
            "DAGSTER_HOME": str(self.data / "dagster_home"),
            "TI_VT_FEED_URI": self.feed.as_uri(),
        }
        if bytecode_cache is not None:  # as pip installs: compiled once, not on every start
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = str(bytecode_cache)

    def prepare(self, packages: int, reports: int) -> None:
        stamp = self.workdir / "feed.json"
        wanted = {"packages": packages, "reports": reports, "format": 1}
        if not (stamp.exists() and json.loads(stamp.read_text()) == wanted):
            from ti_pipeline.core.objectstore import LocalStore
            from ti_pipeline.sample_data.vt import write_feed_day

            shutil.rmtree(self.feed, ignore_errors=True)
            print(f"writing {packages} packages x {reports} reports under {self.feed} ...", flush=True)
            write_feed_day(LocalStore(self.feed), DAY, packages, reports)
            half = self.feed / HALF_DAY.strftime("%Y%m%d")
            half.mkdir()
            for path in _packages(self.feed, DAY)[: packages // 2]:
                shutil.copyfile(path, half / path.name.replace(DAY.strftime("%Y%m%d"), HALF_DAY.strftime("%Y%m%d")))
            stamp.write_text(json.dumps(wanted))
        shutil.rmtree(self.data, ignore_errors=True)
        (self.data / "dagster_home").mkdir(parents=True)
        # Not measured: creates the warehouse and the instance, fills the page cache (and the bytecode cache).
        self.materialize(EMPTY_DAY)
        self.child("kernel_pool", HALF_DAY)

    def child(self, kind: str, day: date = DAY) -> dict:
        out = self.workdir / "out"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", kind, "--feed", str(self.feed),
               "--out", str(out), "--day", day.isoformat()]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=self.env, cwd=self.code)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def materialize(self, day: date) -> dict:
        dagster = str(Path(sys.executable).with_name("dagster"))
        config = {"ops": {"vt_feed__vt_file_reports": {"config": {"workers": 2}}}}
        cmd = [dagster, "asset", "materialize", "-m", "ti_pipeline.definitions", "--select", "vt_feed/vt_file_reports",
               "--partition", day.isoformat(), "--config-json", json.dumps(config)]
        log = self.workdir / "materialize.log"
        before, wall = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
        with open(log, "wb") as out:
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.code)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read_text()[-3000:]}")
        return {"cpu_s": _cpu(resource.RUSAGE_CHILDREN) - before, "wall_s": time.perf_counter() - wall}

    def round(self) -> dict[str, dict]:
        results = {}
        for kind in KINDS:
            if kind.startswith("materialize"):
                results[kind] = self.materialize(EMPTY_DAY if kind == "materialize_empty" else DAY)
            else:
                results[kind] = self.child(kind)
        results["materialize"]["net_cpu_s"] = results["materialize"]["cpu_s"] - results["materialize_empty"]["cpu_s"]
        return results


def _spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=int, default=120, help="packages in the day (default 120)")
    parser.add_argument("--reports", type=int, default=300, help="reports per package (default 300, ~8.5 KB each)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement (default 3)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ti_bench_vt_export"))
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the ti_pipeline checkout to measure (default: this one)")
    parser.add_argument("--bytecode-cache", type=Path,
                        help="compile modules once into this folder (PYTHONPYCACHEPREFIX), as an installed package "
                        "is; by default the environment decides (PYTHONDONTWRITEBYTECODE=1 compiles on every start)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--feed", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--day", type=date.fromisoformat, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.feed, args.out, args.day)))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    bench = Bench(args.workdir, args.code.resolve(), args.bytecode_cache)
    bench.prepare(args.packages, args.reports)
    rounds, loads = [], []
    for number in range(args.rounds):
        loads.append(os.getloadavg())
        rounds.append(bench.round())
        floor = rounds[-1]["python_bz2"]["cpu_s"]
        print(f"round {number + 1}: load {loads[-1][0]:.2f} | " + ", ".join(
            f"{k} {r['cpu_s']:.2f}" for k, r in rounds[-1].items()) + f" | net materialize ratio "
            f"{floor / rounds[-1]['materialize']['net_cpu_s']:.3f}", flush=True)
    loads.append(os.getloadavg())

    first = rounds[0]
    floor = first["python_bz2"]
    print(f"\ncode: {bench.code}, bytecode cache: {args.bytecode_cache or 'none'}\ninput: {floor['packages']} packages ({args.reports} reports each), "
          f"{floor['compressed_bytes'] / 1e6:.1f} MB compressed, {floor['decompressed_bytes'] / 1e6:.1f} MB decompressed, "
          f"{first['kernel_pool']['read']:,} reports, {first['kernel_pool']['written']:,} rows written "
          f"(unaccounted {first['kernel_pool']['unaccounted']})")
    print("load averages (1/5/15 min) at the start of each round and at the end: "
          + "; ".join("/".join(f"{x:.2f}" for x in load) for load in loads))
    print("\nratios: python bz2 CPU-s / the path's, in the same round (median, min-max), and least disturbed passes "
          "(the smallest CPU-s of each over the rounds); against the one-process floor and the two-process one")
    print(f"{'path':<20} {'CPU-s median (min-max)':>24} {'vs bz2 in the round':>26} {'least':>6} "
          f"{'vs bz2 x2 in the round':>26} {'least':>6}")
    least = {kind: min(r[kind]["net_cpu_s" if kind == "materialize" else "cpu_s"] for r in rounds) for kind in KINDS}
    for kind in KINDS:
        key = "net_cpu_s" if kind == "materialize" else "cpu_s"
        cpu = [r[kind][key] for r in rounds]
        label = "materialize - empty" if kind == "materialize" else kind
        cells = []
        for floor_kind in ("python_bz2", "python_bz2_x2"):
            ratios = [r[floor_kind]["cpu_s"] / r[kind][key] for r in rounds]
            cells += [_spread(ratios), f"{least[floor_kind] / least[kind]:.3f}"]
        if kind == "materialize_empty":
            cells = ["", "", "", ""]
        print(f"{label:<20} {_spread(cpu, 2):>24} {cells[0]:>26} {cells[1]:>6} {cells[2]:>26} {cells[3]:>6}")

    print("\npeak RSS of a pool worker as the day grows (pool of 2):")
    for day in (HALF_DAY, DAY):
        r = bench.child("kernel_pool", day)
        print(f"  {r['packages']:>5} packages: worker {r['worker_peak_rss_mib']:.1f} MiB, parent {r['peak_rss_mib']:.1f} MiB")
    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
