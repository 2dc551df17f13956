"""Stopping cleanly: SIGTERM (Slurm, ``timeout``) and Ctrl-C unwind like an exception, so worker pools close and
temporary files go away, then ``w2sr`` exits with one line and ``128 + signal`` (143 / 130), as shells report.

:func:`install_signal_handlers` is called by ``w2sr.cli.main``; DDP ranks started by Lightning's launcher are stopped
before the process leaves the process group. Exercised by ``pytest tests/runtime/test_faults.py -k killed``.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any


class Interrupted(BaseException):
    """SIGTERM or Ctrl-C: unwinds like ``KeyboardInterrupt`` (``finally`` blocks close worker pools, temporary files
    are removed), then ``w2sr.cli.main`` exits with ``128 + signal`` and one line, as shells do (130 / 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def install_signal_handlers() -> dict[int, Any]:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` in this process; return the handlers replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    owner, stopping = os.getpid(), []

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked child (DataLoader worker) keeps the default behaviour
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if stopping:  # already unwinding: a second Ctrl-C must not interrupt the cleanup
            return
        stopping.append(signum)
        stop_ddp_ranks()  # before this process leaves the process group
        raise Interrupted(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handler)
    return previous


def stop_ddp_ranks() -> None:
    """SIGKILL the DDP ranks this process started (Lightning's launcher re-runs this very command line), as
    Lightning does on Ctrl-C: they would otherwise hang in, or crash out of, a collective with a rank that left.
    Linux only (``/proc``); other children (verification and DataLoader workers) are left to their own shutdown."""
    me = str(os.getpid())
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            command = handle.read()
        entries = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return
    for name in entries:
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            if fields[1].decode() != me or fields[0] in (b"Z", b"X"):
                continue
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                if handle.read() == command:
                    os.kill(int(name), signal.SIGKILL)
        except (OSError, IndexError):
            continue
