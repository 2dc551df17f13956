"""Gradients of the first optimizer step of a tiny full fine-tune, for the token-weighting tests.

``python tests/grads_probe.py MODEL TRACES OUT --devices 2 --batch_size 1 --accumulate 2`` runs Lightning with DDP on
CPU ranks (gloo) and saves rank 0's gradients (after the all-reduce) to OUT; ``first_step_grads`` does the same in
process. Used by ``tests/training/test_losses.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def first_step_grads(
    model_path: str,
    traces: str,
    root: str,
    devices: int = 1,
    batch_size: int = 4,
    accumulate: int = 1,
    loss: str = "naive",
    packing: bool = False,
    strategy: str = "auto",
) -> dict[str, torch.Tensor]:
    import lightning as L

    from w2sr.training.datamodule import TraceDataModule
    from w2sr.training.module import StudentModule

    grads: dict[str, torch.Tensor] = {}

    class Capture(L.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            if not grads:
                grads.update(
                    {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
                )

    L.seed_everything(0, verbose=False)
    module = StudentModule(
        model_name_or_path=model_path,
        finetune="full",
        dtype="float32",
        loss=loss,
        export_dir=os.path.join(root, "export"),
        overwrite_export=True,
    )
    data = TraceDataModule(
        traces,
        tokenizer=model_path,
        val_fraction=0.0,
        batch_size=batch_size,
        packing=packing,
        max_seq_length=1024,
        cache_dir=None,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=1,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Capture()],
        default_root_dir=root,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    return grads


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("traces")
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--accumulate", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = first_step_grads(
        args.model,
        args.traces,
        os.path.dirname(args.out),
        args.devices,
        args.batch_size,
        args.accumulate,
        strategy="ddp" if args.devices > 1 else "auto",
    )
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        torch.save(result, args.out)
