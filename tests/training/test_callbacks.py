"""ReasoningAccuracy: generates on held-out problems, verifies, logs val/reasoning_acc before and after."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from w2sr.training.callbacks import ReasoningAccuracy, ReasoningAccuracyMetric
from w2sr.training.datamodule import TraceDataModule
from w2sr.training.module import StudentModule


def test_metric_ignores_unscored():
    metric = ReasoningAccuracyMetric()
    metric.update([True, False, None, True])
    assert abs(metric.compute().item() - 2 / 3) < 1e-6
    assert torch.isnan(ReasoningAccuracyMetric().compute())


def test_callback_logs_reasoning_accuracy(traces_file, tiny_model, tmp_path):
    callback = ReasoningAccuracy(every_n_steps=2, num_problems=5, max_new_tokens=8, batch_size=4)
    module = StudentModule(tiny_model, finetune="full")
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, batch_size=4, val_fraction=0.3)
    logger = CSVLogger(str(tmp_path), name="log")
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=logger,
        enable_progress_bar=False,
        callbacks=[callback],
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, dm)
    steps = [step for step, _ in callback.history]
    assert steps == [0, 2, 4]  # at start, every 2 steps (4 is also the end: not measured twice)
    assert all(0.0 <= acc <= 1.0 for _, acc in callback.history)
    metrics = (tmp_path / "log" / "version_0" / "metrics.csv").read_text()
    assert "val/reasoning_acc" in metrics and "val/truncated_rate" in metrics


def _trained_weights(seed, traces_file, tiny_model, root, with_callback):
    L.seed_everything(seed)
    callbacks = [ReasoningAccuracy(every_n_steps=2, num_problems=3, max_new_tokens=4)] if with_callback else []
    module = StudentModule(tiny_model, finetune="full")
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, batch_size=4, val_fraction=0.3)
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        default_root_dir=str(root),
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, dm)
    return [p.detach().clone() for p in module.parameters()]


def test_generation_in_the_callback_does_not_reset_the_training_seed(traces_file, tiny_model, tmp_path):
    """Seeded sampling runs in a forked RNG: different run seeds still give different training runs."""
    a = _trained_weights(0, traces_file, tiny_model, tmp_path / "a", with_callback=True)
    b = _trained_weights(1, traces_file, tiny_model, tmp_path / "b", with_callback=True)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))
    c = _trained_weights(0, traces_file, tiny_model, tmp_path / "c", with_callback=False)
    assert all(torch.equal(x, y) for x, y in zip(a, c))  # and measuring does not change the run at all


def test_reasoning_accuracy_is_monitorable(traces_file, tiny_model, tmp_path):
    callback = ReasoningAccuracy(every_n_steps=0, num_problems=3, max_new_tokens=4, at_start=False)
    module = StudentModule(tiny_model, finetune="full")
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, batch_size=4, val_fraction=0.3)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[callback],
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, dm)
    assert "val/reasoning_acc" in trainer.callback_metrics and "val/truncated_rate" in trainer.callback_metrics
