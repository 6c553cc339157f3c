"""The process pools of the heavy steps (dump decoding, VT decompression), and their one feeding loop.

Spawned, not forked: a Dagster step process runs threads, and fork would copy their locks. A worker
starts without the parent's main script: spawn would re-run it in every worker, and in a Dagster step
that script is the ``dagster`` CLI, whose imports cost a worker 1.5 CPU-seconds with a bytecode cache
and 3.7 without (measured), more than a VT day's export spends on anything but bz2. So a worker
imports only what its tasks' modules import. Each worker watches its parent and exits when the parent is gone,
so a step killed at any point leaves no orphaned workers behind. ``results_in_order`` keeps a bounded
number of tasks in flight, so memory stays flat whatever the input's size, and hands results back in
input order (deterministic writes).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

R = TypeVar("R")


def _start_worker(parent: int, setup: Callable[[], None] | None) -> None:
    """A worker's start: exit when ``parent`` is gone, then the pool's own ``setup``."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if setup is not None:
        setup()


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawned process started while ``__main__`` is a bare module, so the child has no main script to
    re-run (spawn sends the main module's path or name with the process; a module without either sends
    none). The swap lasts only while the process is launched."""

    def start(self) -> None:
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            super().start()
        finally:
            sys.modules["__main__"] = main


class _WorkerContext(multiprocessing.context.SpawnContext):
    Process = _WorkerProcess


def spawn_pool(workers: int, setup: Callable[[], None] | None = None) -> ProcessPoolExecutor:
    """``workers`` spawned processes; each runs ``setup`` (a module-level function) once as it starts."""
    if multiprocessing.current_process().daemon:
        # multiprocessing would only assert "daemonic processes are not allowed to have children".
        raise RuntimeError(
            f"cannot start a pool of {workers} processes in a daemonic process, such as a child of Celery's "
            "prefork pool: run Celery workers with `ti-pipeline worker` (one step per worker process, in a "
            "thread; docs/deployment.md), or set this step's `workers` to 1"
        )
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_WorkerContext(),
        initializer=_start_worker,
        initargs=(os.getpid(), setup),
    )


def results_in_order(submissions: Iterable[Future[R] | R], limit: int) -> Iterator[R]:
    """The results of ``submissions`` in their order, with at most ``limit`` waiting at a time.

    ``submissions`` is lazy (a generator that submits a task as it is pulled), so a task is submitted
    only once fewer than ``limit`` wait. An item that is already a result (not a ``Future``) keeps its
    place in the order; a task's exception is raised when its turn comes.
    """
    in_flight: deque[Future[R] | R] = deque()
    for item in submissions:
        in_flight.append(item)
        while len(in_flight) >= limit:
            yield _result(in_flight.popleft())
    while in_flight:
        yield _result(in_flight.popleft())


def _result(item: Future[R] | R) -> R:
    return item.result() if isinstance(item, Future) else item
