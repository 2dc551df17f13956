"""Verification workers: math-verify in child processes that the parent can kill, so every answer has a deadline.

math-verify bounds its own time with ``signal.alarm``, which raises outside the main thread and cannot interrupt
long C-level work (``10^{10^{10^{10}}}`` computes a ten-billion-digit integer). Here each worker is a plain
``python -m w2sr.verification.pool_worker`` subprocess (no multiprocessing start method, so the caller's ``__main__`` is
never re-imported and forked DataLoader workers or Lightning threads are fine) that runs math-verify with its
timeouts disabled, under an address-space limit. The parent sends *groups* (one gold answer, many predictions); the
worker parses the gold once, then answers each prediction in turn. Each step must arrive within ``timeout`` seconds
of the previous one, or the worker is killed and a fresh worker takes the rest; the step that ran over is retried
once, alone, under ``timeout * retry_factor`` (3x), so an answer that is slow to check near the limit gets the same
verdict whatever the machine load, and only then gets ``"timeout"``.

No orphans: a worker dies with the process that started it, even mid-computation. On Linux the child asks the
kernel for ``SIGKILL`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``, then checks that the parent is still the
expected pid, closing the race with a parent that died first); the kernel tracks the *thread* that forked, so pools
used from other threads spawn through one long-lived spawner thread. Elsewhere a watchdog thread in the worker exits
when its parent pid changes. Workers ignore Ctrl-C (the terminal sends it to the whole group; the parent handles it
and closes the pool). Exercised by ``pytest tests/verification/test_verify.py tests/runtime/test_faults.py`` and
``python benchmarks/verify_speed.py``.
"""

from __future__ import annotations

import atexit
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from w2sr.records.jsonl import InputError
from w2sr.verification.pool_worker import BAD_GOLD, CORRECT, ERROR, TIMEOUT, WRONG

__all__ = ["BAD_GOLD", "CORRECT", "ERROR", "SHARED_LOCK", "TIMEOUT", "WRONG", "WorkerPool", "shared_pool"]

# --------------------------------------------------------------------------------------------------- parent side
_SPAWN_QUEUE: queue.Queue | None = None
_SPAWN_LOCK = threading.Lock()


def _spawner() -> None:
    while True:
        args, kwargs, reply = _SPAWN_QUEUE.get()
        try:
            reply.put((subprocess.Popen(args, **kwargs), None))
        except BaseException as err:  # noqa: BLE001 - handed back to the caller
            reply.put((None, err))


def _popen(args: list[str], **kwargs: object) -> subprocess.Popen:
    """``Popen`` from a thread that lives as long as the process, so the child's death signal (which Linux ties to
    the forking *thread*) fires when the process dies, not when a short-lived caller thread ends."""
    global _SPAWN_QUEUE
    if threading.current_thread() is threading.main_thread():
        return subprocess.Popen(args, **kwargs)
    with _SPAWN_LOCK:
        if _SPAWN_QUEUE is None or _SPAWN_QUEUE.pid != os.getpid():  # type: ignore[attr-defined]
            _SPAWN_QUEUE = queue.Queue()
            _SPAWN_QUEUE.pid = os.getpid()  # type: ignore[attr-defined]
            threading.Thread(target=_spawner, name="w2sr-verify-spawner", daemon=True).start()
    reply: queue.Queue = queue.Queue(maxsize=1)
    _SPAWN_QUEUE.put((args, kwargs, reply))
    proc, err = reply.get()
    if err is not None:
        raise err
    return proc


@dataclass
class _Worker:
    proc: subprocess.Popen
    inbox: Connection  # we send
    outbox: Connection  # we receive
    steps: deque = field(default_factory=deque)  # outstanding (kind, group, key) in the order the worker answers
    deadline: float = 0.0
    ready: bool = False
    slow: bool = False  # answering retried steps under the longer limit


class WorkerPool:
    """``size`` verification worker processes with a per-step deadline; not thread-safe (lock around ``run``).

    Work goes out in batches of about ``batch_items`` predictions (several gold groups per message), and results
    stream back one per step, so a slow or oversubscribed machine does not pay a round trip per answer.
    """

    def __init__(
        self,
        size: int = 1,
        timeout: float = 5.0,
        memory_mb: int = 4096,
        start_timeout: float = 60.0,
        batch_items: int = 64,
        retry_factor: float = 3.0,
    ):
        self.size, self.timeout, self.memory_mb, self.start_timeout = max(1, size), timeout, memory_mb, start_timeout
        self.batch_items = max(1, batch_items)
        self.retry_factor = retry_factor  # a step over ``timeout`` is retried once under ``timeout * retry_factor``
        self.retries = 0
        self.pid = os.getpid()
        self.restarts = 0
        self._workers: list[_Worker | None] = [None] * self.size

    # -- lifecycle
    def _spawn(self) -> _Worker:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["W2SR_VERIFY_MEMORY_MB"] = str(self.memory_mb)
        env["W2SR_VERIFY_PARENT"] = str(os.getpid())
        proc = _popen(
            [sys.executable, "-m", "w2sr.verification.pool_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        inbox = Connection(os.dup(proc.stdin.fileno()), readable=False)
        outbox = Connection(os.dup(proc.stdout.fileno()), writable=False)
        proc.stdin.close()
        proc.stdout.close()
        return _Worker(proc, inbox, outbox, deadline=time.monotonic() + self.start_timeout)

    def start(self) -> None:
        """Start all workers now (otherwise they start on first use)."""
        for i, worker in enumerate(self._workers):
            if worker is None:
                self._workers[i] = self._spawn()

    def _kill(self, index: int) -> None:
        worker = self._workers[index]
        self._workers[index] = None
        if worker is None:
            return
        for conn in (worker.inbox, worker.outbox):
            conn.close()
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait()

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if os.getpid() != self.pid:  # inherited through fork: the workers belong to the parent
            self._workers = [None] * self.size
            return
        for i in range(self.size):
            self._kill(i)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work
    def run(self, groups: Sequence[tuple[str, Sequence[str]]], on_result: Callable[[int, int, str, str], None]) -> None:
        """Verify each ``(gold, predictions)`` group; call ``on_result(group, item, outcome, detail)`` per item.

        Outcomes: ``correct``, ``wrong``, ``bad_gold`` (gold did not parse or its parse timed out), ``timeout``,
        ``error`` (exception or crash in the worker; ``detail`` names it).
        """
        # pending: (group, [item indices still to do])
        pending: deque[tuple[int, list[int]]] = deque((g, list(range(len(p)))) for g, (_, p) in enumerate(groups) if p)
        remaining = sum(len(items) for _, items in pending)
        retry: deque[tuple[int, list[int]]] = deque()  # groups whose step timed out once
        retried: set[tuple[int, int]] = set()  # (group, item or -1 for the gold) already given the longer limit

        def report(group: int, item: int, outcome: str, detail: str) -> None:
            nonlocal remaining
            remaining -= 1
            on_result(group, item, outcome, detail)

        def drop_group_items(steps: deque, group: int, outcome: str, detail: str) -> None:
            while steps and steps[0][0] == "item" and steps[0][1] == group:
                report(group, steps.popleft()[2], outcome, detail)

        def fail(index: int, outcome: str, detail: str) -> None:
            worker = self._workers[index]
            steps = worker.steps if worker else deque()
            self._kill(index)
            self.restarts += 1
            if not steps:
                return
            kind, group, item = steps.popleft()
            key = (group, item if kind == "item" else -1)
            if outcome == TIMEOUT and self.retry_factor > 1 and key not in retried:
                # near the limit the verdict would depend on machine load: try once more with a longer limit
                self.retries += 1
                items = [item] if kind == "item" else []
                while kind == "gold" and steps and steps[0][0] == "item" and steps[0][1] == group:
                    items.append(steps.popleft()[2])
                retried.add(key)
                retried.update((group, k) for k in items)
                retry.append((group, items))
            elif kind == "gold":  # the gold itself hung or crashed the worker: no item of it can be scored
                drop_group_items(steps, group, BAD_GOLD, f"gold {outcome}: {detail}")
            else:
                report(group, item, outcome, detail)
            regrouped: dict[int, list[int]] = {}
            for kind, group, item in steps:
                if kind == "item":
                    regrouped.setdefault(group, []).append(item)
            pending.extendleft(reversed(list(regrouped.items())))

        while remaining > 0:
            for i in range(self.size):  # hand out work to idle, started workers
                worker = self._workers[i]
                if worker is None and (pending or retry):
                    worker = self._workers[i] = self._spawn()
                if worker is not None and worker.ready and not worker.steps and retry:  # one retried group alone
                    group, items = retry.popleft()
                    worker.steps.append(("gold", group, -1))
                    worker.steps.extend(("item", group, k) for k in items)
                    worker.slow = True
                    worker.deadline = time.monotonic() + self.timeout * self.retry_factor
                    try:
                        worker.inbox.send(("batch", [(groups[group][0], [groups[group][1][k] for k in items])]))
                    except (BrokenPipeError, OSError):
                        fail(i, ERROR, "worker died")
                    continue
                if worker is not None and worker.slow:
                    continue
                # keep about two batches in flight per worker, so it never waits for a round trip
                if worker is None or not worker.ready or len(worker.steps) > self.batch_items or not pending:
                    continue
                batch, count = [], 0
                while pending and count < self.batch_items:
                    group, items = pending.popleft()
                    batch.append((groups[group][0], [groups[group][1][k] for k in items]))
                    worker.steps.append(("gold", group, -1))
                    worker.steps.extend(("item", group, k) for k in items)
                    count += len(items)
                try:
                    worker.inbox.send(("batch", batch))
                except (BrokenPipeError, OSError):
                    fail(i, ERROR, "worker died")
                    continue
                if len(worker.steps) == count + len(batch):  # it was idle: its clock starts now
                    worker.deadline = time.monotonic() + self.timeout
            live = {w.outbox: i for i, w in enumerate(self._workers) if w is not None and (w.steps or not w.ready)}
            if not live:
                if not pending and not retry:
                    raise RuntimeError("verification pool lost track of its work")  # a bug, never a hang
                continue
            next_deadline = min(self._workers[i].deadline for i in live.values())
            for conn in wait(list(live), timeout=max(0.0, next_deadline - time.monotonic())):
                i = live[conn]
                worker = self._workers[i]
                while worker is not None and conn.poll():
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):
                        if not worker.ready:  # it died while starting: a respawn would die the same way
                            code = worker.proc.wait()
                            self._kill(i)
                            raise InputError(
                                f"a verification worker exited while starting (exit code {code}); "
                                f"with a memory cap of {self.memory_mb} MB it may not be able to "
                                "import math-verify: raise options.memory_mb (0 = no cap)",
                                field="options.memory_mb",
                            )
                        fail(i, ERROR, f"worker exited with code {worker.proc.poll()}")
                        break
                    worker.deadline = time.monotonic() + self.timeout * (self.retry_factor if worker.slow else 1)
                    if message[0] == "ready":
                        worker.ready = True
                        break
                    kind, group, item = worker.steps.popleft()
                    if kind == "gold" and not message[1]:
                        drop_group_items(worker.steps, group, BAD_GOLD, message[2])
                    elif kind == "item":
                        report(group, item, message[1], message[2])
                    if not worker.steps:
                        worker.slow = False
                        break
            now = time.monotonic()
            for i, worker in enumerate(self._workers):
                if worker is not None and (worker.steps or not worker.ready) and now > worker.deadline:
                    if not worker.ready:
                        raise RuntimeError(f"verification worker did not start within {self.start_timeout}s")
                    fail(i, TIMEOUT, f"over {self.timeout * (self.retry_factor if worker.slow else 1):g}s")


# ------------------------------------------------------------------------------------------ shared worker (threads)
SHARED_LOCK = threading.Lock()
_SHARED: dict[str, WorkerPool] = {}


def _close_shared() -> None:
    for pool in _SHARED.values():
        pool.close()


atexit.register(_close_shared)


def shared_pool(options: Any) -> WorkerPool:
    """The process-wide single worker (call with ``SHARED_LOCK`` held); a forked child makes its own.

    ``options`` carries ``timeout``, ``memory_mb`` and ``retry_factor`` (a
    :class:`w2sr.verification.grade.VerifyOptions`).
    """
    pool = _SHARED.get("pool")
    if pool is None or pool.pid != os.getpid():
        pool = _SHARED["pool"] = WorkerPool(1, options.timeout, options.memory_mb)
    pool.timeout, pool.retry_factor = options.timeout, options.retry_factor
    return pool
