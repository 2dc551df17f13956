"""ReasoningAccuracy: generates on held-out problems, verifies, logs val/reasoning_acc before and after."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from w2sr.callbacks import ReasoningAccuracy, ReasoningAccuracyMetric
from w2sr.data import TraceDataModule
from w2sr.model import StudentModule


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
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=logger, enable_progress_bar=False,
                        callbacks=[callback], enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(module, dm)
    steps = [step for step, _ in callback.history]
    assert steps == [0, 2, 4]  # at start, every 2 steps (4 is also the end: not measured twice)
    assert all(0.0 <= acc <= 1.0 for _, acc in callback.history)
    metrics = (tmp_path / "log" / "version_0" / "metrics.csv").read_text()
    assert "val/reasoning_acc" in metrics and "val/truncated_rate" in metrics
