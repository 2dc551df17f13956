"""A vLLM general plugin: engine processes that w2sr starts die with the w2sr process that started them.

vLLM's engine core runs in a child process (and, on the CPU backend, its worker in a grandchild) that does not watch
its parent: a ``w2sr generate`` killed with SIGKILL (an OOM killer, ``kill -9``, a scheduler) left both running and
burning the CPU. vLLM loads every ``vllm.general_plugins`` entry point in each of its processes; this one (registered
in ``pyproject.toml``) asks Linux to SIGKILL a process when its parent dies (``PR_SET_PDEATHSIG``), only in
multiprocessing children of a w2sr run (``W2SR_VLLM_PARENT`` is set by :meth:`w2sr.generation.vllm.VLLMBackend.
from_module`), so other programs using vLLM beside w2sr are untouched. Exercised by
``pytest tests/generation/test_vllm_real.py -k sigkill`` (``make test-vllm``).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PARENT_ENV = "W2SR_VLLM_PARENT"
PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """In an engine process of a w2sr run (Linux): die when the parent process dies."""
    if not os.environ.get(PARENT_ENV) or multiprocessing.parent_process() is None:
        return
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != multiprocessing.parent_process().pid:  # it died before the call above (reparented: to init
        os._exit(1)  # or a subreaper): follow it now
