"""Progress bars that show the real step count: ``Epoch 0 · step 120/500 ━━━ 120/500`` instead of Lightning's
``Epoch 6/-2 ━━━ 32/60``.

With ``trainer.max_steps`` set and ``max_epochs: -1`` (how w2sr configs bound a run), Lightning's bars print
``Epoch N/-2`` and count the batches of the current epoch. The classes here count optimizer steps done out of
``max_steps`` instead (the bar's total and position; with gradient accumulation several batches make one step) and
keep the step count in the description. :class:`W2SRTrainer` swaps its default bar for the matching class here; a
bar the user configured is left alone. Exercised by ``pytest tests/runtime/test_progress.py`` and
``pytest tests/runtime/test_faults.py -k progress``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
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


def _counts_steps(trainer: Trainer) -> bool:
    return trainer.max_steps is not None and trainer.max_steps > 0


class StepRichProgressBar(RichProgressBar):
    """Rich bar counting optimizer steps out of ``max_steps``, the step count also in its description."""

    @property
    def total_train_batches(self) -> int | float:
        """The bar's total: ``max_steps`` when it bounds the run (Lightning: the batches of one epoch)."""
        return self.trainer.max_steps if _counts_steps(self.trainer) else super().total_train_batches

    # overrides RichProgressBar's private description hook, the one place its train-bar text is made
    # (tests/layout/test_lightning_private.py fails if a release renames it)
    def _get_train_description(self, current_epoch: int) -> str:
        text = train_description(self.trainer)
        width = len(self.validation_description)
        return f"{text:{width}}" if width > len(text) else text

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)  # resets the bar to 0 at every epoch: back to the step
        if _counts_steps(trainer) and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        # Lightning shows ``batch_idx + 1``: hand it the steps done instead
        position = trainer.global_step - 1 if _counts_steps(trainer) else batch_idx
        super().on_train_batch_end(trainer, pl_module, outputs, batch, position)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(0))


class StepTQDMProgressBar(TQDMProgressBar):
    """TQDM bar counting optimizer steps out of ``max_steps``, the step count also in its description."""

    @property
    def total_train_batches(self) -> int | float:
        """The bar's total: ``max_steps`` when it bounds the run (Lightning: the batches of one epoch)."""
        return self.trainer.max_steps if _counts_steps(self.trainer) else super().total_train_batches

    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(train_description(trainer))
        if _counts_steps(trainer) and not self.train_progress_bar.disable:
            self.train_progress_bar.n = trainer.global_step
            self.train_progress_bar.refresh()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        position = trainer.global_step - 1 if _counts_steps(trainer) else batch_idx  # Lightning shows position + 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, position)
        if self.train_progress_bar is not None and not self.train_progress_bar.disable:
            self.train_progress_bar.set_description(train_description(trainer), refresh=False)


def configured_callbacks(callbacks: Callback | list[Callback] | None) -> list[Callback]:
    """A copy of the ``callbacks`` a trainer is given, taken *before* ``Trainer.__init__``: Lightning appends its
    default callbacks (its progress bar included) to the user's list in place, so afterwards every trainer given a
    list looked as if the user had chosen a bar (the quickstart's ``Epoch 6/-2 ... 32/60``)."""
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


def use_step_progress_bar(trainer: Trainer, configured: list[Callback] | None = None) -> None:
    """Replace the progress bar Lightning added by default with the step-counting one; ``configured`` (the
    ``callbacks`` the trainer was given, see :func:`configured_callbacks`) holding a progress bar means the user
    chose one: leave it. Also, where output goes to a file, Lightning's default rich model summary becomes its plain
    one (:func:`plain_summary_without_terminal`)."""
    from lightning.pytorch.callbacks import ProgressBar

    given = configured if isinstance(configured, (list, tuple)) else [configured]
    plain_summary_without_terminal(trainer, given)
    if any(isinstance(callback, ProgressBar) for callback in given):
        return
    for index, callback in enumerate(trainer.callbacks):
        if type(callback) is RichProgressBar:
            trainer.callbacks[index] = StepRichProgressBar()
        elif type(callback) is TQDMProgressBar:
            trainer.callbacks[index] = StepTQDMProgressBar()


def plain_summary_without_terminal(trainer: Trainer, given: list[Any]) -> None:
    """Without a terminal (``COLUMNS`` set by ``w2sr.runtime.quiet.full_width_when_not_a_terminal``), Lightning's
    default ``RichModelSummary`` pads its parameter lines to the full width (an expanding grid): use its plain-text
    ``ModelSummary`` instead, unless the user configured a summary."""
    import os

    from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

    from w2sr.runtime.quiet import FILE_COLUMNS

    if os.environ.get("COLUMNS") != str(FILE_COLUMNS) or any(isinstance(c, ModelSummary) for c in given):
        return
    for index, callback in enumerate(trainer.callbacks):
        if type(callback) is RichModelSummary:
            trainer.callbacks[index] = ModelSummary()  # the depth Lightning gives its default one
