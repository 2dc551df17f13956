"""Fit checks: what ``w2sr fit`` refuses before any data is tokenized or weight loaded: an export that would
replace an earlier one or one of the run's inputs, a strategy that accumulates gradients by itself, and
(``w2sr.training.memory``; for GRPO ``w2sr.training.memory_rl``) a run that clearly cannot fit on the GPU, whose
per-GPU estimate is printed first.

Exercised by ``w2sr fit`` and ``pytest tests/training/test_memory.py tests/training/test_promises_io.py``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from w2sr.records.jsonl import InputError, check_not_input
from w2sr.training.memory import preflight
from w2sr.training.memory_rl import rl_preflight

if TYPE_CHECKING:
    from lightning.pytorch import LightningDataModule, LightningModule, Trainer


def check_export_target(trainer: Trainer, model: LightningModule, datamodule: LightningDataModule | None) -> None:
    """The export folder is none of the run's inputs and replaces no earlier export (``model.overwrite_export``)."""
    # the module is not attached to the Trainer before fit starts; ``export_path`` reads the run's root folder
    # through LightningModule._trainer, a private field (tests/layout/test_lightning_private.py guards it)
    model._trainer = trainer
    try:
        hp, data = model.hparams, datamodule.hparams if datamodule is not None else {}
        inputs = {f"model.{k}": hp.get(k) for k in ("model_name_or_path", "tokenizer_name_or_path", "adapter_path")}
        files = ("train_file", "val_file", "test_file", "predict_file", "problems", "val_problems")  # SFT and RL data
        inputs.update({f"data.{k}": data.get(k) for k in files})
        check_not_input(model.export_path(), inputs, folder=True, option="model.export_dir")
        model.check_export()
    finally:
        model._trainer = None


def check_gradient_accumulation(trainer: Trainer) -> None:
    """Refuse ``accumulate_grad_batches > 1`` under a strategy that accumulates by itself (Lightning's own
    DeepSpeedStrategy): it would scale the gradients a second time and step on its own boundaries, while
    ``StudentModule.training_step`` already scales each micro-batch for the step's token count. Called before fit
    (``W2SRCLI.before_fit``) and in ``StudentModule.on_fit_start``, not on every micro-batch."""
    if trainer.accumulate_grad_batches > 1 and trainer.strategy.handles_gradient_accumulation:
        raise InputError(
            f"trainer.strategy {type(trainer.strategy).__name__} accumulates gradients by itself "
            "(it would scale them a second time and step on its own boundaries); use "
            "w2sr.strategies.W2SRDeepSpeedStrategy / w2sr_deepspeed_stage_2|3 or "
            "trainer.accumulate_grad_batches 1",
            field="trainer.strategy",
        )


def memory_preflight(trainer: Trainer, model: LightningModule, datamodule: LightningDataModule | None) -> None:
    """Print the per-GPU memory estimate; refuse (exit 2) a run that clearly cannot fit, unless
    ``W2SR_SKIP_MEMORY_CHECK`` is set."""
    import torch
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.utilities import rank_zero_info

    data = getattr(datamodule, "hparams", {})
    on_cuda = isinstance(trainer.accelerator, CUDAAccelerator) and torch.cuda.is_available()
    capacity = torch.cuda.get_device_properties(trainer.strategy.root_device).total_memory if on_cuda else None
    world = trainer.num_devices * trainer.num_nodes
    hybrid = "HYBRID" in str(getattr(trainer.strategy, "sharding_strategy", ""))
    line, refusal = preflight(
        model.hparams,
        int(data.get("batch_size", 1)),
        int(data.get("max_seq_length", 4096)),
        trainer.strategy,
        world,
        capacity,
        shard_group=trainer.num_devices if hybrid else world,
    ) if not model.hparams.get("rl") else rl_preflight(  # GRPO: policy + reference + rollout engine
        model.hparams, data, trainer.strategy, trainer.num_devices if hybrid else world,
        trainer.accumulate_grad_batches, str(trainer.precision), capacity,
    )  # fmt: skip
    if line:
        rank_zero_info(f"w2sr: {line}")
    if refusal and not os.environ.get("W2SR_SKIP_MEMORY_CHECK"):
        raise InputError(refusal, field="trainer.strategy")
