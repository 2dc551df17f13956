"""Callbacks that tests add to a real ``w2sr fit`` process (``--trainer.callbacks+=fit_probes.RecordBatches``), and
:func:`sigkill_at_pause`, which kills such a process where :class:`PauseAtStep` holds it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback


class RecordBatches(Callback):
    """Appends each trained micro-batch's trace keys (one JSON line per batch) to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": trainer.global_step, "keys": batch["keys"]}) + "\n")


class PauseAtStep(Callback):
    """Stops making progress once ``step`` optimizer steps are done (and checkpointed): writes ``marker`` and sleeps,
    so a test can SIGKILL the process at a known point."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(self.step))
            time.sleep(600)


def sigkill_at_pause(command: list[str], marker: Path, env: dict[str, str], seconds: float, what: str) -> int:
    """Run ``command`` (a fit with ``PauseAtStep(step, marker)``), SIGKILL it once the marker exists and return its
    exit code; the process never outlives the call. ``what`` names the pause for the failure message."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + seconds
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, f"the run never reached {what}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode
