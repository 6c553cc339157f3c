"""The process pools of the heavy steps (dump decoding, VT decompression), and their one feeding loop.

Spawned, not forked: a Dagster step process runs threads, and fork would copy their locks. Each worker
watches its parent and exits when the parent is gone, so a step killed at any point leaves no
orphaned workers behind. ``results_in_order`` keeps a bounded number of tasks in flight, so memory
stays flat whatever the input's size, and hands results back in input order (deterministic writes).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

R = TypeVar("R")


def _exit_with_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    if multiprocessing.current_process().daemon:
        # multiprocessing would only assert "daemonic processes are not allowed to have children".
        raise RuntimeError(
            f"cannot start a pool of {workers} processes in a daemonic process, such as a child of Celery's "
            "prefork pool: run Celery workers with `ti-pipeline worker` (one step per worker process, in a "
            "thread; docs/deployment.md), or set this step's `workers` to 1"
        )
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
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
