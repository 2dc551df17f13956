"""GRPO through the real CLI (issue 25, items 1 and 4): ``w2sr fit --config lightning_configs/quickstart/rl.yaml``
end to end (rollouts, rewards, CSV metrics, ReasoningAccuracy, export, cost.json), and exact resume after SIGKILL:
killed after a checkpoint that falls inside a reuse cycle (``num_iterations`` 2) and resumed with ``--ckpt_path``,
the run ends with the weights of an uninterrupted one."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from fit_probes import sigkill_at_pause
from rl_helpers import write_problems

pytestmark = pytest.mark.slow  # real w2sr fit processes on the tiny policy
TESTS = Path(__file__).resolve().parents[1]
CONFIG = REPO / "lightning_configs" / "quickstart" / "rl.yaml"


def fit_args(policy: str, problems: Path, run: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(CONFIG),
        "--model.model_name_or_path",
        policy,
        "--model.export_dir",
        str(run / "export"),
        "--model.optimizer.lr",
        "0.01",
        "--model.rl.max_new_tokens",
        "8",
        "--data.problems",
        str(problems),
        "--data.val_problems",
        str(problems),
        "--data.batch_size",
        "2",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.logger.save_dir",
        str(run),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def test_the_quickstart_rl_config_runs_end_to_end(rl_policy, tmp_path):
    problems = write_problems(tmp_path / "p.jsonl")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = fit_args(rl_policy, problems, run, "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1")
    result = subprocess.run([sys.executable, "-m", "w2sr.cli", *args], capture_output=True, text=True, env=env,
                            timeout=600, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (run / "export" / "model.safetensors").is_file()
    card = json.loads((run / "export" / "w2sr_student.json").read_text())
    assert card["method"] == "grpo" and card["global_step"] == 3
    cost = json.loads((run / "cost.json").read_text())["cost"]
    assert cost["stage"] == "rl" and cost["tokens_generated"] > 0 and cost["phases"]["rollout"] > 0
    [metrics] = list(run.glob("fit/version_*/metrics.csv"))
    rows = list(csv.DictReader(metrics.open()))
    steps = [r for r in rows if r.get("rl/reward")]
    assert len(steps) == 3 and all(0 <= float(r["rl/reward"]) <= 1 for r in steps)
    assert [r for r in rows if r.get("val/reasoning_acc")]  # ReasoningAccuracy works unchanged on held-out problems
    assert "RL step memory estimate" in result.stderr + result.stdout
    [saved] = list(run.rglob("config.yaml"))
    config = saved.read_text()
    assert "class_path: w2sr.rl.GRPOStudent" in config and "class_path: w2sr.rl.ProblemDataModule" in config


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1"}


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "export" / "model.safetensors")


def test_sigkill_inside_a_reuse_cycle_then_resume_matches_an_uninterrupted_run(rl_policy, tmp_path):
    """num_iterations 2, 4 steps: generation 0 trains steps 1-2, generation 1 steps 3-4. Killed once step 3 is
    checkpointed (generation 1's rollouts and old log-probs live only in that checkpoint), resumed with --ckpt_path."""
    problems = write_problems(tmp_path / "p.jsonl")
    common = ["--trainer.max_steps", "4", "--model.rl.num_iterations", "2", "--trainer.callbacks", "[]",
              "--trainer.logger", "false"]  # fmt: skip
    checkpoint = [
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
        "--trainer.callbacks.every_n_train_steps=1",
        "--trainer.callbacks.save_last=true",
        "--trainer.enable_checkpointing",
        "true",
    ]
    marker, run = tmp_path / "paused", tmp_path / "resumed"
    pause = ["--trainer.callbacks+=fit_probes.PauseAtStep", "--trainer.callbacks.step=3",
             f"--trainer.callbacks.marker={marker}"]  # fmt: skip
    command = [sys.executable, "-m", "w2sr.cli", *fit_args(rl_policy, problems, run, *common, *checkpoint, *pause)]
    code = sigkill_at_pause(command, marker, env(), 300, "step 3")
    assert code == -signal.SIGKILL and not (run / "export").exists()
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 3 and saved["w2sr_rl_rollouts"][0]["key"] == (0, 1)

    args = fit_args(rl_policy, problems, run, *common, *checkpoint, "--ckpt_path", "last")
    resumed = subprocess.run([sys.executable, "-m", "w2sr.cli", *args], env=env(), capture_output=True, text=True,
                             timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    args = fit_args(rl_policy, problems, tmp_path / "straight", *common, "--trainer.enable_checkpointing", "false")
    straight = subprocess.run([sys.executable, "-m", "w2sr.cli", *args], env=env(), capture_output=True, text=True,
                              timeout=600)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-3000:]
    a, b = weights(run), weights(tmp_path / "straight")
    assert a.keys() == b.keys()
    start = weights_of(rl_policy)
    assert max(float((b[k] - start[k]).abs().max()) for k in b) > 1e-3  # the runs did train
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


def weights_of(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(path) / "model.safetensors")
