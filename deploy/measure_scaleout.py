"""Measure what the scale-out sizing rests on (docs/deployment.md quotes the figures).

    python deploy/measure_scaleout.py rss [--workers 2]
        Peak RSS of each heavy step (the step process plus its pool of ``workers`` processes), run by
        ``dagster asset materialize`` (one asset per run) on the sample data: the memory a Kubernetes step pod requests.

    python deploy/measure_scaleout.py celery --days 4 --celery-workers 1 2 [--pool threads]
        A VT backfill of ``--days`` days (one run per day, ``workers`` processes in each step) through
        1, then 2 Celery worker processes on the Redis broker: wall time from the first submission to the
        last run's end, and the CPU seconds of the workers (their steps and pools included).

Both write their data under a temporary folder and print one table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def clean_env(data: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TI_")}
    return {**env, "TI_DATA_DIR": str(data), "DAGSTER_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}


def new_home(base: Path) -> Path:
    home = base / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


# ------------------------------------------------------------------------------------------- rss

class TreeRss:
    """Peak RSS of each subtree under ``root``'s direct children (a multiprocess run's step processes),
    sampled every 20 ms."""

    def __init__(self, root: int):
        self.root = psutil.Process(root)
        self.peaks: dict[int, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                steps = self.root.children()
            except psutil.NoSuchProcess:
                return
            for step in steps:
                try:
                    own = step.memory_info().rss
                    pool = [c.memory_info().rss for c in step.children(recursive=True)]
                except psutil.Error:
                    continue
                peak = self.peaks.setdefault(step.pid, {"total": 0, "step": 0, "worker": 0})
                peak["total"] = max(peak["total"], own + sum(pool))
                peak["step"] = max(peak["step"], own)
                peak["worker"] = max([peak["worker"], *pool])
            time.sleep(0.02)

    def stop(self) -> list[dict[str, float]]:
        self._stop.set()
        self._thread.join()
        return list(self.peaks.values())


def measure_rss(args: argparse.Namespace) -> None:
    from ti_pipeline.core.objectstore import LocalStore
    from ti_pipeline.sample_data.sage import write_sage_dump
    from ti_pipeline.sample_data.vt import write_vt_feed

    base = Path(tempfile.mkdtemp(prefix="ti-rss-"))
    try:
        write_vt_feed(LocalStore(base / "vt_feed"))
        write_sage_dump(LocalStore(base / "sage_dump"), docs_per_shard=args.docs_per_shard)
        home = new_home(base)
        env = clean_env(base, home)
        # One asset per run, so the one step process with a pool is that asset's step.
        cases = [
            ("vt_feed/vt_file_reports", "2020-11-01", "vt_feed__vt_file_reports"),
            ("sage_dump/ioc_file_hashes", "r01", "sage_dump__ioc_file_hashes"),
            ("sage_dump/ioc_domains", "r01", "sage_dump__ioc_domains"),
        ]
        print("| step | workers | peak RSS step + pool MiB | step process MiB | largest pool worker MiB |")
        print("|---|---:|---:|---:|---:|")
        for asset, partition, op in cases:
            config = base / f"{op}.yaml"
            config.write_text(yaml.safe_dump({"ops": {op: {"config": {"workers": args.workers}}}}))
            proc = subprocess.Popen(
                [str(BIN / "dagster"), "asset", "materialize", "-m", "ti_pipeline.definitions", "--select", asset,
                 "--partition", partition, "-c", str(config)],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            tree = TreeRss(proc.pid)
            code = proc.wait()
            for peak in tree.stop():
                if peak["worker"]:  # the step process with a pool (not the resource tracker)
                    print(f"| {asset} | {args.workers} | {peak['total'] / 2**20:.0f} | "
                          f"{peak['step'] / 2**20:.0f} | {peak['worker'] / 2**20:.0f} |")
            if code:
                print(f"{asset} exited {code}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------- celery

def cpu_seconds(proc: psutil.Process) -> float:
    """CPU of a process and its live descendants, each with the children it has reaped (step pools)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def write_feed(root: Path, days: list[str], packages: int, reports: int) -> int:
    """The sample generator's first day, copied under every other day's name (generating is ~10x
    slower than exporting; the days' contents need not differ for a timing)."""
    from ti_pipeline.core.objectstore import LocalStore
    from ti_pipeline.sample_data.vt import write_vt_feed

    first = days[0].replace("-", "")
    write_vt_feed(LocalStore(root), days=(days[0],), packages_per_day=packages, reports_per_package=reports)
    for day in days[1:]:
        other = day.replace("-", "")
        for path in list((root / first).iterdir()):
            target = root / other / path.name.replace(first, other)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def measure_celery(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="ti-celery-"))
    days = [f"2020-11-{d:02d}" for d in range(1, args.days + 1)]
    try:
        t = time.monotonic()
        feed = base / "feed"
        size = write_feed(feed / "vt_feed", days, args.packages, args.reports)
        print(f"feed: {len(days)} days x {args.packages} packages x {args.reports} reports, "
              f"{size / 2**20:.1f} MiB compressed, written in {time.monotonic() - t:.0f} s", flush=True)
        print("| worker processes x pool (concurrency) | runs | wall s | worker CPU s | CPU / wall "
              "| worker answered while busy | load avg before |")
        print("|---|---:|---:|---:|---:|---|---:|")
        for repeat in range(args.repeat):  # interleaved, so a change in the machine's load hits all
            for count in args.celery_workers:
                load = os.getloadavg()[0]
                wall, cpu, answered = celery_backfill(base / f"w{count}-{repeat}", feed, days, count, args)
                shape = f"{count} x threads (1)" if args.pool == "threads" else f"1 x {args.pool} ({count})"
                print(f"| {shape} | {len(days)} | {wall:.1f} | {cpu:.1f} | {cpu / wall:.2f} | {answered} | {load:.1f} |",
                      flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Pinger:
    """Asks the workers ``inspect active`` every second while the runs go (what the run process's
    lost-worker watch relies on): how many asks any worker answered, and how many answers came from a
    worker that was running a step at the time."""

    def __init__(self, config: dict):
        from ti_pipeline.defs.worker import worker_app

        self.app = worker_app(config)
        self.asked = self.answered = self.busy = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                self.asked += 1
                replies = self.app.control.inspect(timeout=2.0).active() or {}
                self.answered += bool(replies)
                self.busy += any(tasks for tasks in replies.values())

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        return f"{self.answered}/{self.asked} ({self.busy} while running a step)"


def celery_backfill(base: Path, feed: Path, days: list[str], count: int, args) -> tuple[float, float, str]:
    from ti_pipeline.defs.worker import load_config

    shutil.copytree(feed, base)
    home = new_home(base)
    env = clean_env(base, home)
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)):  # the storage, before concurrent runs race to create it
        pass
    queue = f"measure-{uuid.uuid4().hex[:8]}"
    config = {"execution": {"config": {"broker": args.broker, "backend": args.broker, "heavy_queue": queue,
                                       "warehouse_queue": f"{queue}-w"}},
              "ops": {"vt_feed__vt_file_reports": {"config": {"workers": args.workers}}}}
    (base / "run.yaml").write_text(yaml.safe_dump(config))
    log = open(base / "worker.log", "wb")
    if args.pool == "threads":
        cmd = [sys.executable, "-m", "ti_pipeline.defs.worker", "-y", str(base / "run.yaml"), "-q", "heavy",
               "--processes", str(count)]
    else:  # for comparison: one Celery process with another pool and concurrency
        cmd = [sys.executable, "-c", _OTHER_POOL, str(base / "run.yaml"), queue, args.pool, str(count)]
    worker = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = count if args.pool == "threads" else 1
        while (base / "worker.log").read_bytes().count(b" ready.") < ready:
            assert worker.poll() is None, (base / "worker.log").read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(1)
        runs = RunProcesses(env, home, base / "run.yaml", days)
        before = cpu_seconds(psutil.Process(worker.pid))
        pinger = Pinger(load_config(str(base / "run.yaml")))
        start = time.monotonic()
        runs.go()
        codes = runs.wait()
        wall = time.monotonic() - start
        cpu = cpu_seconds(psutil.Process(worker.pid)) - before
        answered = pinger.stop()
        if any(codes):
            text = (base / "worker.log").read_text()
            reason = next((line for line in text.splitlines() if "daemonic" in line), f"see {base}/*.log")
            print(f"runs failed ({codes}): {reason[:300]}")
        return wall, cpu, answered
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(120)
        log.close()


_RUN = """
import sys, yaml
from dagster import DagsterInstance, execute_job
from ti_pipeline.defs.scale_out import reconstructable_job
job = reconstructable_job("vt_file_reports_on_celery")
job.get_definition()
print("loaded", flush=True)
sys.stdin.readline()
with DagsterInstance.from_config(sys.argv[1]) as instance:
    result = execute_job(job, instance=instance, run_config=yaml.safe_load(open(sys.argv[2])),
                         tags={"dagster/partition": sys.argv[3]}, raise_on_error=False)
sys.exit(0 if result.success else 1)
"""


class RunProcesses:
    """One run process per day, started and loaded before the clock starts (a deployment's run
    processes live on other hosts); ``go`` starts their runs at once, ``wait`` returns exit codes."""

    def __init__(self, env: dict[str, str], home: Path, config_path: Path, days: list[str]):
        self.procs = [
            subprocess.Popen([sys.executable, "-c", _RUN, str(home), str(config_path), day], cwd=ROOT, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for day in days
        ]
        for proc in self.procs:
            assert proc.stdout.readline().strip() == "loaded"

    def go(self) -> None:
        for proc in self.procs:
            proc.stdin.write("\n")
            proc.stdin.flush()

    def wait(self) -> list[int]:
        return [proc.wait() for proc in self.procs]


# A worker with another pool, for comparison with the threads pool `ti-pipeline worker` uses.
_OTHER_POOL = """
import sys
from ti_pipeline.defs.worker import load_config, worker_app
import ti_pipeline.definitions
config = load_config(sys.argv[1])
app = worker_app(config)
app.worker_main(["worker", "--pool", sys.argv[3], "--concurrency", sys.argv[4], "--queues", sys.argv[2],
                 "--without-mingle", "--without-gossip", "--hostname", "other-%h"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("rss")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--docs-per-shard", type=int, default=20000)
    p = sub.add_parser("celery")
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--packages", type=int, default=6, help="packages per day")
    p.add_argument("--reports", type=int, default=1500, help="reports per package")
    p.add_argument("--workers", type=int, default=2, help="processes inside each step")
    p.add_argument("--celery-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pool", default="threads", help="threads (ti-pipeline worker), or solo/prefork to compare")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--broker", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    (measure_rss if args.what == "rss" else measure_celery)(args)


if __name__ == "__main__":
    main()
