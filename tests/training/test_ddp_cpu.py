"""DDP on the CPU (2 processes, gloo): w2sr fit trains, logs val/reasoning_acc once per evaluation (not once per
rank) and exports exactly once."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # two processes, each loading torch + Lightning: ~30-60 s on 2 busy cores


def test_fit_ddp_two_cpu_processes(tmp_path, tiny_model, traces_file):
    run = tmp_path / "run"
    args = [
        "fit",
        "--model.model_name_or_path",
        tiny_model,
        "--model.lora.r",
        "4",
        "--model.export_dir",
        str(run / "export"),
        "--data.train_file",
        str(traces_file),
        "--data.batch_size",
        "4",
        "--data.val_fraction",
        "0.2",
        "--trainer.max_steps",
        "4",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(run),
        "--trainer.logger.name",
        "fit",
        "--trainer.callbacks+=w2sr.callbacks.ReasoningAccuracy",
        "--trainer.callbacks.every_n_steps=2",
        "--trainer.callbacks.num_problems=4",
        "--trainer.callbacks.max_new_tokens=8",
    ]
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "w2sr.cli", *args], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert "memory estimate for" in output  # the pre-flight estimate is printed (no GPU: no refusal)
    [metrics] = list(run.glob("fit/version_*/metrics.csv"))
    rows = list(csv.DictReader(metrics.open()))
    acc_steps = [int(r["step"]) for r in rows if r.get("val/reasoning_acc")]
    assert acc_steps == [0, 2, 4]  # start, every 2 steps, end: one row each, not one per rank
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/loss") for r in rows)
    assert output.count("w2sr: saved the adapter") == 1
    export = run / "export"
    assert (export / "adapter_model.safetensors").is_file() and (export / "tokenizer_config.json").is_file()
    assert json.loads((export / "w2sr_student.json").read_text())["global_step"] == 4
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no staging folder left behind
