"""The training progress bar counts optimizer steps done out of ``max_steps`` (``w2sr.runtime.progress``), not the
batches of the current epoch: the quickstart's bar read ``Epoch 6/-2 ... 32/60`` at step 392 of 600."""

from __future__ import annotations

from typing import Any

import pytest
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from w2sr.cli import W2SRTrainer


class Positions(Callback):
    """The train bar's (position, total) after every training batch, read from the bar itself."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.seen.append(position(trainer.progress_bar_callback))


def position(bar: Any) -> tuple[int, int]:
    if isinstance(bar, RichProgressBar):
        task = bar.progress.tasks[bar.train_progress_bar_id]
        return int(task.completed), int(task.total)
    return int(bar.train_progress_bar.n), int(bar.train_progress_bar.total)


def fit(tmp_path: Any, bar: str, **trainer: Any) -> tuple[W2SRTrainer, Positions]:
    positions = Positions()
    model = W2SRTrainer(
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=str(tmp_path),
        limit_val_batches=0,
        callbacks=[positions],
        **trainer,
    )
    if bar == "tqdm":  # as Lightning picks it when rich is not installed
        from w2sr.runtime.progress import StepTQDMProgressBar

        index = model.callbacks.index(model.progress_bar_callback)
        model.callbacks[index] = StepTQDMProgressBar()
    model.callbacks.remove(positions)
    model.callbacks.append(positions)  # after the bar: it reads what the bar shows once the batch is done
    model.fit(BoringModel())
    return model, positions


@pytest.mark.parametrize("bar", ["rich", "tqdm"])
def test_bar_counts_optimizer_steps_across_epochs(tmp_path, bar):
    trainer, positions = fit(tmp_path, bar, max_steps=25, limit_train_batches=10)  # 2.5 epochs of 10 batches
    assert trainer.global_step == 25
    assert isinstance(trainer.progress_bar_callback, (RichProgressBar, TQDMProgressBar))
    assert positions.seen == [(step, 25) for step in range(1, 26)]  # not 1..10, 1..10, 1..5 out of 10


@pytest.mark.parametrize("bar", ["rich", "tqdm"])
def test_bar_counts_steps_not_batches_with_accumulation(tmp_path, bar):
    _, positions = fit(tmp_path, bar, max_steps=6, limit_train_batches=8, accumulate_grad_batches=2)
    # 12 batches make 6 optimizer steps; the bar moves once per step (not 1..8, 1..4 out of 8)
    assert positions.seen == [(done, 6) for done in (0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6)]


def test_epoch_bounded_runs_keep_counting_batches(tmp_path):
    _, positions = fit(tmp_path, "rich", max_epochs=2, limit_train_batches=4)
    assert positions.seen == [(1, 4), (2, 4), (3, 4), (4, 4)] * 2
