"""Resume: what ``w2sr fit --ckpt_path`` needs beyond Lightning's own restore, applied in ``on_train_start``.

* The training loader's position (``w2sr.training.batching.StepDataLoader``): Lightning loads a dataloader's state in
  ``FitLoop.setup_data``; when ``estimated_stepping_batches`` (the LR schedule's length, asked in
  ``configure_optimizers``) built the loader before the checkpoint was restored, that load was skipped and the epoch
  would replay from its first batch. It is loaded here instead.
* The optimizer settings you pass (lr, weight decay, betas, ...) win over the checkpoint's.

Exercised by ``pytest tests/training/test_resume.py tests/training/test_promises_resume.py``.
"""

from __future__ import annotations

from typing import Any


def load_pending_loader_states(trainer: Any) -> None:
    """Load the checkpoint's dataloader state if Lightning skipped it (see the module docstring)."""
    fit_loop = trainer.fit_loop
    # private FitLoop API (lightning 2.5-2.6): the states read from the checkpoint, and the method that loads them
    # into the combined loader; tests/training/test_lightning_private.py fails if a release renames either
    if getattr(fit_loop, "_combined_loader_states_to_load", None):
        fit_loop._load_combined_loader_states()


def apply_configured_optimizer(trainer: Any, configured_groups: list[dict[str, Any]]) -> None:
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
