"""Resume: what ``w2sr fit --ckpt_path`` needs beyond Lightning's own restore, applied in ``on_train_start``.

* The training loader's position (``w2sr.training.batching.StepDataLoader``): Lightning loads a dataloader's state in
  ``FitLoop.setup_data``; when ``estimated_stepping_batches`` (the LR schedule's length, asked in
  ``configure_optimizers``) built the loader before the checkpoint was restored, that load was skipped and the epoch
  would replay from its first batch. It is loaded here instead.
* The optimizer settings you pass (lr, weight decay, betas, ...) win over the checkpoint's.
* What a checkpoint holds: a LoRA run saves only the trainable weights (megabytes, not the base model), and loading
  one checks that every trainable weight is there (``StudentModule.on_save_checkpoint`` / ``on_load_checkpoint``).

Exercised by ``pytest tests/training/test_resume.py tests/training/test_promises_resume.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from w2sr.records.jsonl import InputError
from w2sr.training.shards import clean_name

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer


def load_pending_loader_states(trainer: Trainer) -> None:
    """Load the checkpoint's dataloader state if Lightning skipped it (see the module docstring)."""
    fit_loop = trainer.fit_loop
    # private FitLoop API (lightning 2.5-2.6): the states read from the checkpoint, and the method that loads them
    # into the combined loader; tests/training/test_lightning_private.py fails if a release renames either
    if getattr(fit_loop, "_combined_loader_states_to_load", None):
        fit_loop._load_combined_loader_states()


def apply_configured_optimizer(trainer: Trainer, configured_groups: list[dict[str, Any]]) -> None:
    """On resume, the optimizer settings you pass win over the checkpoint's: restoring the optimizer state would
    otherwise bring back the old ones with its moments. The schedule's base learning rate follows, and the current
    one is recomputed at the restored step."""
    optimizer = trainer.optimizers[0]
    for group, configured in zip(optimizer.param_groups, configured_groups):
        group.update(configured)
        group["initial_lr"] = configured["lr"]
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        scheduler.base_lrs = [group["lr"] for group in configured_groups]
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas:
            for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, lambdas):
                group["lr"] = base * factor(scheduler.last_epoch)
            # torch's LambdaLR caches the last rates in a private field that get_last_lr() returns
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _trainable(module: LightningModule) -> set[str]:
    return {clean_name(name) for name, p in module.named_parameters() if p.requires_grad}


def keep_trainable_weights(module: LightningModule, checkpoint: dict[str, Any]) -> None:
    """A LoRA run's checkpoint keeps only the trainable weights: megabytes, not the whole base model.

    Sharded checkpoints (FSDP ``state_dict_type: sharded``) keep every weight: each rank writes only its share,
    and Lightning's sharded resume loads the module's whole state dict. DeepSpeed saves weights itself.
    """
    if module.hparams.finetune != "lora" or "state_dict" not in checkpoint:
        return
    # FSDPStrategy._state_dict_type (private, no public accessor): sharded checkpoints keep every weight
    if getattr(module.trainer.strategy, "_state_dict_type", None) == "sharded":
        return
    trainable = _trainable(module)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if clean_name(k) in trainable}


def check_trainable_weights(module: LightningModule, checkpoint: dict[str, Any]) -> None:
    """Loading is not strict (the base is not in the checkpoint), so check every trainable weight is there.

    Sharded (FSDP) and DeepSpeed checkpoints load the weights in the strategy; the dict seen here has none.
    """
    if module.model is None or "state_dict" not in checkpoint:
        return
    missing = sorted(_trainable(module) - {clean_name(k) for k in checkpoint["state_dict"]})
    if missing:
        raise InputError(
            f"the checkpoint does not hold {len(missing)} trainable weights of this model "
            f"(first: {missing[0]}); was it made with other finetune/lora settings?",
            field="ckpt_path",
        )
