"""Callbacks that tests add to a real ``w2sr fit`` process (``--trainer.callbacks+=fit_probes.RecordBatches``)."""

from __future__ import annotations

import json
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
