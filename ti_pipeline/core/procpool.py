"""The process pools of the heavy steps (dump decoding, VT decompression).

Spawned, not forked: a Dagster step process runs threads, and fork would copy their locks. Each worker
watches its parent and exits when the parent is gone, so a step killed at any point leaves no
orphaned workers behind.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor


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
