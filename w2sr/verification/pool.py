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
from w2sr.verification.pool_worker import BAD_GOLD, CORRECT, ERROR, TIMEOUT, WRONG, Outcome

__all__ = ["BAD_GOLD", "CORRECT", "ERROR", "SHARED_LOCK", "TIMEOUT", "WRONG", "Outcome", "WorkerPool", "shared_pool"]

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


@dataclass(frozen=True)
class Step:
    """One answer a worker owes, in the order it answers: a group's gold answer (``item`` None) or one prediction."""

    group: int
    item: int | None = None

    @property
    def is_gold(self) -> bool:
        return self.item is None


@dataclass
class Job:
    """A group's gold answer and the predictions (their indices) still to verify against it."""

    group: int
    items: list[int]

    def steps(self) -> list[Step]:
        """The steps a worker owes for it: the gold first, then each prediction."""
        return [Step(self.group), *(Step(self.group, k) for k in self.items)]


@dataclass
class _Worker:
    proc: subprocess.Popen
    inbox: Connection  # we send
    outbox: Connection  # we receive
    steps: deque[Step] = field(default_factory=deque)  # what it owes, in the order it answers
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
    def step_limit(self, slow: bool) -> float:
        """Seconds a worker may take per step: ``timeout``, or ``timeout * retry_factor`` for a retried group."""
        return self.timeout * (self.retry_factor if slow else 1)

    def run(
        self, groups: Sequence[tuple[str, Sequence[str]]], on_result: Callable[[int, int, Outcome, str], None]
    ) -> None:
        """Verify each ``(gold, predictions)`` group; call ``on_result(group, item, outcome, detail)`` per item.

        Outcomes: ``correct``, ``wrong``, ``bad_gold`` (gold did not parse or its parse timed out), ``timeout``,
        ``error`` (exception or crash in the worker; ``detail`` names it). The bookkeeping is :class:`PoolRun`'s.
        """
        PoolRun(self, groups, on_result).run()


class PoolRun:
    """The state of one :meth:`WorkerPool.run`: the jobs not handed out yet, the jobs waiting for their one retry, the
    steps already retried and how many verdicts are still owed.

    Each turn hands out work (:meth:`dispatch`), reads what the busy workers answered (:meth:`collect`) and kills the
    ones past their deadline (:meth:`enforce_deadlines`); a killed worker's steps go back to the queue (:meth:`fail`).
    """

    def __init__(
        self,
        pool: WorkerPool,
        groups: Sequence[tuple[str, Sequence[str]]],
        on_result: Callable[[int, int, Outcome, str], None],
    ) -> None:
        self.pool, self.groups, self.on_result = pool, groups, on_result
        self.pending: deque[Job] = deque(Job(g, list(range(len(p)))) for g, (_, p) in enumerate(groups) if p)
        self.retry: deque[Job] = deque()  # jobs whose step ran over the limit once, each sent alone
        self.retried: set[Step] = set()  # steps already given the longer limit
        self.owed = sum(len(job.items) for job in self.pending)

    def run(self) -> None:
        while self.owed > 0:
            self.dispatch()
            busy = {w.outbox: i for i, w in enumerate(self.pool._workers) if w is not None and (w.steps or not w.ready)}
            if not busy:
                if not self.pending and not self.retry:
                    raise RuntimeError("verification pool lost track of its work")  # a bug, never a hang
                continue
            self.collect(busy)
            self.enforce_deadlines()

    # -- handing out work
    def dispatch(self) -> None:
        """Start missing workers while work waits; give a retried job to an idle worker, alone, and keep about two
        batches in flight per other worker, so it never waits for a round trip."""
        for index in range(self.pool.size):
            worker = self.pool._workers[index]
            if worker is None and (self.pending or self.retry):
                worker = self.pool._workers[index] = self.pool._spawn()
            if worker is None or not worker.ready:
                continue
            if self.retry and not worker.steps:
                self.send(index, [self.retry.popleft()], slow=True)
            elif not worker.slow and self.pending and len(worker.steps) <= self.pool.batch_items:
                self.send(index, self.next_batch(), slow=False)

    def next_batch(self) -> list[Job]:
        """Pending jobs of about ``batch_items`` predictions in all."""
        batch, count = [], 0
        while self.pending and count < self.pool.batch_items:
            batch.append(self.pending.popleft())
            count += len(batch[-1].items)
        return batch

    def send(self, index: int, jobs: list[Job], slow: bool) -> None:
        """Hand ``jobs`` to worker ``index``; its clock starts now if it was idle (``slow``: under the longer limit)."""
        worker = self.pool._workers[index]
        if not worker.steps:
            worker.deadline = time.monotonic() + self.pool.step_limit(slow)
        worker.slow = worker.slow or slow
        for job in jobs:
            worker.steps.extend(job.steps())
        groups = self.groups
        try:
            worker.inbox.send(("batch", [(groups[j.group][0], [groups[j.group][1][k] for k in j.items]) for j in jobs]))
        except (BrokenPipeError, OSError):
            self.fail(index, ERROR, "worker died")

    # -- reading answers
    def collect(self, busy: dict[Connection, int]) -> None:
        """Wait for answers until the nearest deadline; take every answer that arrived."""
        nearest = min(self.pool._workers[i].deadline for i in busy.values())
        for conn in wait(list(busy), timeout=max(0.0, nearest - time.monotonic())):
            self.read(busy[conn])

    def read(self, index: int) -> None:
        """Take worker ``index``'s answers, each restarting its clock: ``("ready",)``, then per step
        ``("gold", parsed, detail)`` or ``("item", outcome, detail)`` (``w2sr.verification.pool_worker``)."""
        worker = self.pool._workers[index]
        while worker.outbox.poll():
            try:
                message = worker.outbox.recv()
            except (EOFError, OSError):
                self.lost(index)
                return
            worker.deadline = time.monotonic() + self.pool.step_limit(worker.slow)
            if message[0] == "ready":
                worker.ready = True
                return
            step = worker.steps.popleft()
            if not step.is_gold:
                self.report(step, message[1], message[2])
            elif not message[1]:  # the gold did not parse: none of its predictions can be scored
                self.drop_items(worker.steps, step.group, BAD_GOLD, message[2])
            if not worker.steps:
                worker.slow = False
                return

    def lost(self, index: int) -> None:
        """Worker ``index`` closed its pipe: it crashed on a step, or could not even start (a configuration error)."""
        worker = self.pool._workers[index]
        if worker.ready:
            self.fail(index, ERROR, f"worker exited with code {worker.proc.poll()}")
            return
        code = worker.proc.wait()  # it died while starting: a respawn would die the same way
        self.pool._kill(index)
        raise InputError(
            f"a verification worker exited while starting (exit code {code}); with a memory cap of "
            f"{self.pool.memory_mb} MB it may not be able to import math-verify: raise options.memory_mb (0 = no cap)",
            field="options.memory_mb",
        )

    def enforce_deadlines(self) -> None:
        now = time.monotonic()
        for index, worker in enumerate(self.pool._workers):
            if worker is not None and (worker.steps or not worker.ready) and now > worker.deadline:
                if not worker.ready:
                    raise RuntimeError(f"verification worker did not start within {self.pool.start_timeout}s")
                self.fail(index, TIMEOUT, f"over {self.pool.step_limit(worker.slow):g}s")

    # -- outcomes
    def report(self, step: Step, outcome: Outcome, detail: str) -> None:
        self.owed -= 1
        self.on_result(step.group, step.item, outcome, detail)

    def drop_items(self, steps: deque[Step], group: int, outcome: Outcome, detail: str) -> None:
        """Give ``outcome`` to the predictions of ``group`` at the front of ``steps`` (those that follow its gold)."""
        while steps and not steps[0].is_gold and steps[0].group == group:
            self.report(steps.popleft(), outcome, detail)

    def fail(self, index: int, outcome: Outcome, detail: str) -> None:
        """Kill worker ``index``. The step it was on is retried once, alone, under the longer limit after a first
        timeout (near the limit a verdict would depend on machine load); otherwise it gets ``outcome`` (a gold: all
        its predictions get ``bad_gold``). The predictions it had not reached go back to the front of the queue."""
        worker = self.pool._workers[index]
        steps = worker.steps if worker else deque()
        self.pool._kill(index)
        self.pool.restarts += 1
        if not steps:
            return
        step = steps.popleft()
        if outcome == TIMEOUT and self.pool.retry_factor > 1 and step not in self.retried:
            self.pool.retries += 1
            job = Job(step.group, [] if step.is_gold else [step.item])
            while step.is_gold and steps and not steps[0].is_gold and steps[0].group == step.group:
                job.items.append(steps.popleft().item)
            self.retried.update(job.steps() if step.is_gold else [step])
            self.retry.append(job)
        elif step.is_gold:
            self.drop_items(steps, step.group, BAD_GOLD, f"gold {outcome}: {detail}")
        else:
            self.report(step, outcome, detail)
        unreached: dict[int, list[int]] = {}
        for left in steps:
            if not left.is_gold:
                unreached.setdefault(left.group, []).append(left.item)
        self.pending.extendleft(reversed([Job(group, items) for group, items in unreached.items()]))


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
