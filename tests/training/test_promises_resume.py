"""README promise: ``w2sr fit --ckpt_path`` restores weights, optimizer, scheduler and loop state, and the configuration
you pass (not the checkpoint's) wins.

A probe callback records the training state at ``on_train_start`` of the resumed run — after Lightning has restored
the checkpoint, before the first new step — and the test compares it with the checkpoint file itself. A fresh run
(no ``--ckpt_path``) starts at step 0 with a zero-state optimizer and new LoRA weights, so it cannot pass.
(Kill-and-resume in the middle of an epoch, with the sampler state, is tested elsewhere.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback

from w2sr.cli import main

pytestmark = pytest.mark.slow


class StateProbe(Callback):
    """Records (class-level, so a CLI-built instance can be read back) the state the resumed run starts from."""

    seen: list[dict[str, Any]] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizer = trainer.optimizers[0]
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        names = {id(p): n for n, p in pl_module.named_parameters()}
        StateProbe.seen.append(
            {
                "global_step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "weights": {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad},
                "exp_avg": {
                    names[id(p)]: optimizer.state[p]["exp_avg"].clone()
                    for group in optimizer.param_groups
                    for p in group["params"]
                    if p in optimizer.state
                },
                "scheduler_last_epoch": scheduler.last_epoch,
                "lr": [group["lr"] for group in optimizer.param_groups],
                "max_steps": trainer.max_steps,
                "hparams": dict(pl_module.hparams),
            }
        )


def _fit_args(tiny_model: str, traces_file: Path, run: Path, steps: int, export: str = "export") -> list[str]:
    return [
        "fit",
        "--model.model_name_or_path",
        tiny_model,
        "--model.lora.r",
        "4",
        "--model.export_dir",
        str(run / export),
        "--data.train_file",
        str(traces_file),
        "--data.batch_size",
        "4",
        "--trainer.max_steps",
        str(steps),
        "--trainer.accelerator",
        "cpu",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.callbacks+=test_promises_resume.StateProbe",
    ]


def test_resume_restores_state_and_the_command_line_wins(tmp_path, tiny_model, traces_file):
    run = tmp_path / "run"
    StateProbe.seen.clear()
    main(_fit_args(tiny_model, traces_file, run, 3))
    [ckpt_path] = list((run / "checkpoints").glob("*.ckpt"))
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["global_step"] == 3

    # resume with other values on the command line: a longer run, a new export folder, another LoRA dropout
    main(
        _fit_args(tiny_model, traces_file, run, 5, export="export-resumed")
        + ["--ckpt_path", str(ckpt_path), "--model.lora.dropout", "0.0"]
    )
    start = StateProbe.seen[-1]

    # loop state: the resumed run continues from the checkpoint's step, not from 0
    assert start["global_step"] == ckpt["global_step"] == 3
    # weights: every trainable (LoRA) weight equals the checkpoint's, and the checkpoint holds only those
    assert set(start["weights"]) == set(ckpt["state_dict"])
    for name, value in start["weights"].items():
        assert torch.equal(value, ckpt["state_dict"][name]), name
    assert any(float(v.abs().sum()) > 0 for n, v in start["weights"].items() if "lora_B" in n)  # trained, not init
    # optimizer: AdamW's first moments are the checkpoint's (a fresh optimizer has no state at all)
    saved = ckpt["optimizer_states"][0]
    assert len(start["exp_avg"]) == len(saved["state"]) == len(start["weights"])
    order = [n for n in start["weights"]]  # parameter order == the optimizer's param order (trainable only)
    for index, name in enumerate(order):
        assert torch.equal(start["exp_avg"][name], saved["state"][index]["exp_avg"]), name
    # scheduler: the schedule continues from step 3 with the checkpoint's learning rate
    assert start["scheduler_last_epoch"] == ckpt["lr_schedulers"][0]["last_epoch"] == 3
    assert start["lr"] == pytest.approx(ckpt["lr_schedulers"][0]["_last_lr"])

    # the configuration passed on the command line wins over the checkpoint's
    assert start["max_steps"] == 5
    assert start["hparams"]["export_dir"] == str(run / "export-resumed")
    assert ckpt["hyper_parameters"]["export_dir"] == str(run / "export")
    lora = start["hparams"]["lora"]
    assert (lora["dropout"] if isinstance(lora, dict) else lora.dropout) == 0.0
    card = json.loads((run / "export-resumed" / "w2sr_student.json").read_text())
    assert card["global_step"] == 5 and card["lora"]["r"] == 4 and card["lora"]["dropout"] == 0.0
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)  # the one checkpoint a fit keeps
    assert resumed["global_step"] == 5 and resumed["lr_schedulers"][0]["last_epoch"] == 5


class FirstStepLR(Callback):
    """Records the learning rate and weight decay the first step of a run uses."""

    seen: list[tuple[int, float, float]] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not FirstStepLR.seen or FirstStepLR.seen[-1][0] != id(trainer):
            group = trainer.optimizers[0].param_groups[0]
            FirstStepLR.seen.append((id(trainer), group["lr"], group["weight_decay"]))


def test_resume_with_another_learning_rate_uses_it(tmp_path, tiny_model, traces_file):
    """``--ckpt_path ... --model.optimizer.init_args.lr X``: the optimizer's moments come from the checkpoint, its
    learning rate and weight decay from the command line (the schedule position is kept: constant schedule here)."""
    run = tmp_path / "run"
    probe = [
        "--trainer.callbacks+=test_promises_resume.FirstStepLR",
        "--model.scheduler.name",
        "constant_with_warmup",
        "--model.scheduler.warmup_ratio",
        "0.0",
    ]
    main(
        _fit_args(tiny_model, traces_file, run, 3)
        + probe
        + [
            "--model.optimizer.init_args.lr",
            "0.001",
            "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.dirpath",
            str(run / "ck"),
            "--trainer.callbacks.save_last",
            "true",
        ]
    )
    main(
        _fit_args(tiny_model, traces_file, run, 5, export="export-2")
        + probe
        + [
            "--model.optimizer.init_args.lr",
            "0.5",
            "--model.optimizer.init_args.weight_decay",
            "0.25",
            "--ckpt_path",
            str(run / "ck" / "last.ckpt"),
        ]
    )
    (_, first_lr, _), (_, resumed_lr, resumed_wd) = FirstStepLR.seen[-2:]
    assert first_lr == pytest.approx(0.001)
    assert resumed_lr == pytest.approx(0.5) and resumed_wd == pytest.approx(0.25)
