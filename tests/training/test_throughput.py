"""w2sr.callbacks.Throughput: counts over a real fit, logged every N steps and summed up at the end."""

from __future__ import annotations

import csv

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger

from w2sr.training.callbacks import Throughput
from w2sr.training.datamodule import TraceDataModule
from w2sr.training.module import StudentModule


def test_throughput_counts_tokens_padding_and_mfu(traces_file, tiny_model, tmp_path, caplog):
    module = StudentModule(
        model_name_or_path=tiny_model, finetune="full", dtype="float32", export_dir=str(tmp_path / "export")
    )
    data = TraceDataModule(str(traces_file), tokenizer=tiny_model, val_fraction=0.0, batch_size=4, cache_dir=None)
    callback = Throughput(log_every_n_steps=2, peak_tflops=1.0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=4,
        accumulate_grad_batches=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        logger=CSVLogger(str(tmp_path), name="log"),
        default_root_dir=str(tmp_path),
    )
    with caplog.at_level("INFO"):
        trainer.fit(module, data)
    batches = list(data.train_dataloader())[:8]  # the same plan: 4 steps x 2 micro-batches
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    slots = sum(b["input_ids"].numel() for b in batches)
    targets = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    s = callback.summary
    assert s["tokens"] == tokens and s["target_tokens"] == targets
    assert s["throughput/padding_share"] == pytest.approx(1 - tokens / slots)
    assert 0 < s["train_seconds"] <= s["wall_seconds"]
    assert s["throughput/tokens_per_s"] == pytest.approx(tokens / s["train_seconds"])
    params = module.model.num_parameters()
    assert s["throughput/tflops_per_s"] > 3 * 2 * params * tokens / s["train_seconds"] / 1e12
    assert s["throughput/mfu"] == pytest.approx(s["throughput/tflops_per_s"] / 1.0)
    assert "w2sr: throughput:" in caplog.text and "MFU" in caplog.text
    rows = list(csv.DictReader(open(next((tmp_path / "log").glob("version_*/metrics.csv")))))
    logged = [r for r in rows if r.get("throughput/tokens_per_s")]
    assert [int(r["step"]) for r in logged] == [2, 4] and all(float(r["throughput/mfu"]) > 0 for r in logged)
