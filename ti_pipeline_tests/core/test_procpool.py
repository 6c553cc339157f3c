"""The bounded feeding loop of the process pools: input order, at most ``limit`` waiting, errors in turn."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from ti_pipeline.core.procpool import results_in_order, spawn_pool


def test_results_come_in_input_order_with_at_most_limit_waiting_and_errors_in_turn():
    submitted: list[int] = []

    def submissions() -> Iterator[Future[str] | str]:
        for i in range(10):
            submitted.append(i)
            if i == 3:
                yield "ready 3"  # a result computed in the parent keeps its place
                continue
            future: Future[str] = Future()
            if i == 7:
                future.set_exception(ValueError("task 7"))
            else:
                future.set_result(f"task {i}")
            yield future

    got: list[str] = []
    with pytest.raises(ValueError, match="task 7"):
        for result in results_in_order(submissions(), 4):
            assert len(submitted) - len(got) <= 4  # submitted, not yet handed back
            got.append(result)
    assert got == ["task 0", "task 1", "task 2", "ready 3", "task 4", "task 5", "task 6"]
    assert submitted == list(range(10))  # 7 raised once its turn came, with 8 and 9 already in flight


def test_a_short_input_is_drained_in_order():
    futures = []
    for i in range(3):
        future: Future[int] = Future()
        future.set_result(i)
        futures.append(future)
    assert list(results_in_order(iter(futures), 8)) == [0, 1, 2]
    assert list(results_in_order(iter([]), 2)) == []


def test_a_spawned_pool_through_the_loop():
    with spawn_pool(2) as pool:
        assert list(results_in_order((pool.submit(pow, 2, n) for n in range(8)), 4)) == [2**n for n in range(8)]


def test_a_worker_does_not_rerun_the_parents_main_script(tmp_path, monkeypatch):
    """In a Dagster step the main script is the ``dagster`` CLI: a worker must not import it again."""
    marker = tmp_path / "main-ran"
    script = tmp_path / "parent_main.py"
    script.write_text(f"open({str(marker)!r}, 'a').write('ran')\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    with spawn_pool(2) as pool:
        pids = set(results_in_order((pool.submit(os.getpid) for _ in range(4)), 4))
    assert sys.modules["__main__"] is main  # the parent's main is back
    assert os.getpid() not in pids
    assert not marker.exists()  # multiprocessing's spawn context would have run the script in each worker
