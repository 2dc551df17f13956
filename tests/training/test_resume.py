"""Exact resume: a ``w2sr fit`` killed with SIGKILL mid-epoch and resumed with ``--ckpt_path last`` trains on
exactly the batches it had not seen and ends with the weights of an uninterrupted run (and the tokens trained in its
cost.json)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fit_probes import sigkill_at_pause

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parents[1]


def fit_command(tiny_model: str, traces: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "w2sr.cli",
        "fit",
        "--model.model_name_or_path",
        tiny_model,
        "--model.finetune",
        "full",
        "--model.dtype",
        "float32",
        "--model.optimizer.lr",
        "0.003",
        "--model.export_dir",
        str(run / "export"),
        "--model.overwrite_export",
        "true",
        "--data.train_file",
        str(traces),
        "--data.val_fraction",
        "0",
        "--data.batch_size",
        "2",
        "--data.cache_dir",
        str(run.parent / "cache"),
        "--data.group_by_length",
        "true",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "2",
        "--trainer.accumulate_grad_batches",
        "2",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.callbacks+=fit_probes.RecordBatches",
        f"--trainer.callbacks.path={run.parent / 'batches'}-{run.name}.jsonl",
        *extra,
    ]


def env() -> dict[str, str]:
    root = str(TESTS.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, str(TESTS)]), "OMP_NUM_THREADS": "1"}


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "export" / "model.safetensors")


def batches(path: Path) -> list[list[str]]:
    return [json.loads(line)["keys"] for line in path.read_text().splitlines()]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_model, traces_file, tmp_path):
    # 40 traces / micro-batch 2 = 20 micro-batches = 10 optimizer steps per epoch; killed after step 6 of epoch 0
    checkpoint = [
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
        "--trainer.callbacks.every_n_train_steps=3",
        "--trainer.callbacks.save_last=true",
    ]
    marker = tmp_path / "paused"
    run = tmp_path / "resumed"
    command = fit_command(
        tiny_model,
        traces_file,
        run,
        *checkpoint,
        "--trainer.callbacks+=fit_probes.PauseAtStep",
        "--trainer.callbacks.step=6",
        f"--trainer.callbacks.marker={marker}",
    )
    assert sigkill_at_pause(command, marker, env(), 240, "step 6") == -signal.SIGKILL
    assert (tmp_path / "ckpt" / "last.ckpt").is_file() and not (run / "export").exists()
    seen_before_kill = batches(tmp_path / "batches-resumed.jsonl")
    assert len(seen_before_kill) == 12

    resumed = subprocess.run(
        fit_command(tiny_model, traces_file, run, *checkpoint, "--ckpt_path", "last"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = subprocess.run(
        fit_command(tiny_model, traces_file, tmp_path / "straight", "--trainer.enable_checkpointing", "false"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]

    uninterrupted = batches(tmp_path / "batches-straight.jsonl")
    assert len(uninterrupted) == 40
    assert batches(tmp_path / "batches-resumed.jsonl") == uninterrupted  # the 12 seen, then exactly the other 28
    # the cost record continues across the kill: the checkpoint's figures plus the resumed run's (issue 25.3)
    cost, straight_cost = (json.loads((r / "cost.json").read_text())["cost"] for r in (run, tmp_path / "straight"))
    assert (cost["segments"], straight_cost["segments"]) == (2, 1)
    assert cost["tokens_trained"] == straight_cost["tokens_trained"] > 0  # 12 micro-batches before, 28 after
    a, b = weights(run), weights(tmp_path / "straight")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
