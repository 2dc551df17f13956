"""README promise: answer checking runs in separate, memory-capped, killable processes. A worker that dies gives its
answer status ``error`` and a fresh worker grades the rest; every worker runs under the ``memory_mb`` address-space
cap (checked on the live process). Note: an answer that needs more memory than the cap does not kill the worker:
math-verify catches the MemoryError and reports a failed comparison, so such an answer is graded ``wrong``.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from w2sr.verification.pool import WorkerPool

TOWER = "10^{10^{10^{10}}}"  # math-verify works on this for minutes: the worker is busy when it gets killed


def _grade(pool: WorkerPool, groups) -> dict:
    results = {}
    pool.run(groups, lambda group, item, outcome, detail: results.__setitem__((group, item), (outcome, detail)))
    return results


def _address_space_limit(pid: int) -> str:
    for line in open(f"/proc/{pid}/limits", encoding="utf-8"):
        if line.startswith("Max address space"):
            return line.split()[3]
    raise AssertionError("no address-space line")


@pytest.mark.skipif(not os.path.exists("/proc/self/limits"), reason="needs Linux /proc")
def test_workers_run_under_the_memory_cap():
    for memory_mb, expected in ((256, str(256 << 20)), (0, "unlimited")):
        with WorkerPool(1, timeout=20, memory_mb=memory_mb) as pool:
            assert _grade(pool, [("4", ["4"])]) == {(0, 0): ("correct", "")}
            assert _address_space_limit(pool._workers[0].proc.pid) == expected


def test_a_cap_too_small_to_start_a_worker_is_a_clear_error_not_a_respawn_loop():
    from w2sr.records.jsonl import InputError

    started = time.monotonic()
    with WorkerPool(1, timeout=20, memory_mb=16) as pool, pytest.raises(InputError, match="options.memory_mb"):
        _grade(pool, [("4", ["4"])])
    assert time.monotonic() - started < 30 and pool.restarts == 0


def test_a_crashed_worker_gives_error_and_the_rest_are_graded():
    results = {}
    with WorkerPool(1, timeout=60, memory_mb=0) as pool:

        def on_result(group: int, item: int, outcome: str, detail: str) -> None:
            results[(group, item)] = (outcome, detail)
            if (group, item) == (0, 0):  # the worker now works on the tower: kill it half a second into it
                pid = pool._workers[0].proc.pid
                threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()

        started = time.monotonic()
        pool.run([("4", ["4", TOWER, "4", "5"]), ("7", ["7", "8"])], on_result)
        assert time.monotonic() - started < 40  # the crash is noticed at once, not at the 60 s deadline
        assert pool.restarts == 1
    assert results[(0, 1)][0] == "error" and results[(0, 1)][1].startswith("worker exited")
    assert {key: value[0] for key, value in results.items() if key != (0, 1)} == {
        (0, 0): "correct",
        (0, 2): "correct",
        (0, 3): "wrong",
        (1, 0): "correct",
        (1, 1): "wrong",
    }
