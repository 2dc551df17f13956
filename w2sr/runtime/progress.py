"""Progress bars that show the real step count: ``Epoch 0 · step 120/500`` instead of Lightning's ``Epoch 0/-2``.

With ``trainer.max_steps`` set and ``max_epochs: -1`` (how w2sr configs bound a run), Lightning's bars print
``Epoch N/-2``. :class:`W2SRTrainer` swaps its default bar for the matching class here; a bar the user configured
is left alone. Exercised by ``pytest tests/runtime/test_faults.py -k progress``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


def train_description(trainer: Trainer) -> str:
    """``Epoch E/N`` for epoch-bounded runs; ``Epoch E · step S/M`` when ``max_steps`` bounds the run."""
    max_epochs = trainer.max_epochs
    text = f"Epoch {trainer.current_epoch}"
    if max_epochs is not None and max_epochs > 0 and not trainer.max_steps > 0:
        text += f"/{max_epochs - 1}"
    if trainer.max_steps > 0:
        text += f" · step {trainer.global_step}/{trainer.max_steps}"
    return text


class StepRichProgressBar(RichProgressBar):
    """Rich bar whose description carries the optimizer step count."""

    # overrides RichProgressBar's private description hook, the one place its train-bar text is made
    # (tests/layout/test_lightning_private.py fails if a release renames it)
    def _get_train_description(self, current_epoch: int) -> str:
        text = train_description(self.trainer)
        width = len(self.validation_description)
        return f"{text:{width}}" if width > len(text) else text

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(0))


class StepTQDMProgressBar(TQDMProgressBar):
    """TQDM bar whose description carries the optimizer step count."""

    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(train_description(trainer))

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.train_progress_bar is not None and not self.train_progress_bar.disable:
            self.train_progress_bar.set_description(train_description(trainer), refresh=False)


def use_step_progress_bar(trainer: Trainer, configured: Any = None) -> None:
    """Replace the progress bar Lightning added by default with the step-counting one; ``configured`` (the
    ``callbacks`` the trainer was given) holding a progress bar means the user chose one: leave it."""
    from lightning.pytorch.callbacks import ProgressBar

    given = configured if isinstance(configured, (list, tuple)) else [configured]
    if any(isinstance(callback, ProgressBar) for callback in given):
        return
    for index, callback in enumerate(trainer.callbacks):
        if type(callback) is RichProgressBar:
            trainer.callbacks[index] = StepRichProgressBar()
        elif type(callback) is TQDMProgressBar:
            trainer.callbacks[index] = StepTQDMProgressBar()
