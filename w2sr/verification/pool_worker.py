"""The verification worker process: math-verify on one group after another, answering each step as it is done.

Started by :class:`w2sr.verification.pool.WorkerPool` as ``python -m w2sr.verification.pool_worker`` with pipes on
stdin / stdout: it receives ``("batch", [(gold, [prediction, ...]), ...])`` messages and answers, in order, one
``("gold", parsed, detail)`` per group and one ``("item", outcome, detail)`` per prediction of a parsed gold. It runs
math-verify with its own timeouts disabled (the parent kills it at a deadline), under the address-space limit
``W2SR_VERIFY_MEMORY_MB``, and dies with its parent (``W2SR_VERIFY_PARENT``; see the pool's docstring).
Exercised by ``pytest tests/verification/test_promises_verify_workers.py tests/runtime/test_faults.py``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Literal

# Item outcomes reported by workers (and by the pool for items it had to give up on).
Outcome = Literal["correct", "wrong", "bad_gold", "timeout", "error"]
CORRECT, WRONG, BAD_GOLD, TIMEOUT, ERROR = "correct", "wrong", "bad_gold", "timeout", "error"


def _wrap(answer: str) -> str:
    return "\\boxed{" + answer + "}"


def _worker_loop(inbox: Connection, outbox: Connection) -> None:  # pragma: no cover - runs in the child
    import logging

    import math_verify.grader as grader
    import math_verify.parser as parser
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    parser.TIMEOUT_WARNING_SHOWN = grader.TIMEOUT_WARNING_SHOWN = True  # the parent enforces the deadline
    cache: dict[str, list] = {}
    outbox.send(("ready",))
    while True:
        try:
            message = inbox.recv()
        except EOFError:  # parent gone
            return
        if message[0] == "stop":
            return
        for gold, predictions in message[1]:
            try:
                parsed_gold = cache.get(gold)
                if parsed_gold is None:
                    parsed_gold = parse(_wrap(gold), parsing_timeout=None)
                    if len(cache) > 50_000:
                        cache.clear()
                    cache[gold] = parsed_gold
            except BaseException as err:  # noqa: BLE001 - MemoryError, RecursionError: the gold is unusable
                parsed_gold = []
                outbox.send(("gold", False, f"{type(err).__name__}"))
            else:
                outbox.send(("gold", bool(parsed_gold), "" if parsed_gold else "math-verify could not parse it"))
            if not parsed_gold:
                continue
            for prediction in predictions:
                try:
                    parsed = parse(_wrap(prediction), parsing_timeout=None)
                    ok = bool(parsed) and verify(parsed_gold, parsed, timeout_seconds=None)
                    outbox.send(("item", CORRECT if ok else WRONG, ""))
                except BaseException as err:  # noqa: BLE001
                    outbox.send(("item", ERROR, type(err).__name__))


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    """Exit as soon as the process that started this worker is gone (kernel signal on Linux, watchdog anywhere)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if parent and os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    if parent:
        threading.Thread(target=watch, name="w2sr-parent-watchdog", daemon=True).start()


def _main() -> None:  # pragma: no cover - runs in the child
    _die_with_parent(int(os.environ.get("W2SR_VERIFY_PARENT", "0")))
    limit_mb = int(os.environ.get("W2SR_VERIFY_MEMORY_MB", "0"))
    if limit_mb > 0:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))
        except (ImportError, ValueError, OSError):
            pass
    inbox = Connection(os.dup(0), writable=False)
    outbox = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # stray prints go to stderr, never into the protocol
    sys.setrecursionlimit(10_000)
    _worker_loop(inbox, outbox)


if __name__ == "__main__":  # pragma: no cover
    _main()
