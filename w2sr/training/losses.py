"""Token-level NLL of a causal LM: summed over target tokens, with three implementations of the last layer.

``token_nll_sum(model, batch, impl)`` returns ``(sum of token NLLs, number of target tokens)`` for one micro-batch;
the caller divides by the target tokens of the whole optimizer step (``w2sr.training.module.StudentModule``). Labels
follow the Hugging Face convention: unshifted, ``-100`` where no loss is taken; position ``t`` predicts
``labels[t + 1]``.

- ``naive``: the model's full logits (``[batch, seq, vocab]``, upcast to float32) and ``cross_entropy``: what HF does.
  At vocabulary 151,936 and 8 x 2,048 tokens the float32 logits alone are 10 GB.
- ``chunked``: the decoder's final hidden states, only at target positions, then the LM head and cross-entropy over
  chunks of ``chunk_size`` tokens, each checkpointed, so no more than one chunk of logits ever exists (forward and
  backward). Pure PyTorch: runs on the CPU, with peft (LoRA/QLoRA) and full fine-tuning. The target positions are
  gathered with the batch's host-side target count (no boolean-mask indexing: no device sync, and every chunk has
  the same shape; the last is filled up with ignored positions).
- ``liger``: liger-kernel's ``LigerFusedLinearCrossEntropyLoss`` (Triton, CUDA only; ``pip install 'w2sr[gpu]'``).
- ``auto``: ``liger`` on CUDA when liger-kernel is importable, else ``chunked``.

Supported heads for ``chunked`` / ``liger``: a linear LM head (tied or not, with or without bias) and Gemma-2-style
``final_logit_softcapping``. Models that scale logits otherwise (``logit_scale``, ``logits_scaling``) are refused with
an error: use ``naive`` for them. Exercised by ``pytest tests/training/test_losses.py`` and
``python benchmarks/loss_memory.py``.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torchmetrics import Metric

from w2sr.records.jsonl import InputError
from w2sr.training.batching import FLASH_KWARGS, Batch

IGNORE_INDEX = -100
LossImpl = Literal["auto", "naive", "chunked", "liger"]
LOSS_IMPLS: tuple[str, ...] = get_args(LossImpl)
UNSUPPORTED_SCALING = ("logit_scale", "logits_scaling")
LIGER_ROWS = 256  # the Liger loss's rows are rounded up to this: few distinct shapes, no sync


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_loss_impl(impl: str, device: torch.device | str) -> str:
    """``auto`` -> ``liger`` on CUDA with liger-kernel installed, else ``chunked``; checks the choice is usable."""
    if impl not in LOSS_IMPLS:
        raise InputError(f"unknown loss {impl!r}; choose one of {list(LOSS_IMPLS)}", field="model.loss")
    on_cuda = torch.device(device).type == "cuda"
    if impl == "auto":
        return "liger" if on_cuda and liger_available() else "chunked"
    if impl == "liger":
        if not liger_available():
            raise InputError(
                "model.loss: liger needs liger-kernel: pip install 'w2sr[gpu]' (or use chunked)", field="model.loss"
            )
        if not on_cuda:
            raise InputError(
                "model.loss: liger runs on CUDA only (Triton kernels); use chunked on this device", field="model.loss"
            )
    return impl


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The ``*ForCausalLM`` under a peft wrapper (its layers still carry the LoRA modules)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head_and_decoder(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    causal_lm = _unwrap(model)
    config = causal_lm.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in UNSUPPORTED_SCALING:
        value = getattr(text_config, name, None)
        if value not in (None, 1, 1.0):
            raise InputError(
                f"{type(causal_lm).__name__} scales its logits ({name}={value}); the chunked and liger "
                "losses do not: use model.loss naive",
                field="model.loss",
            )
    head = causal_lm.get_output_embeddings()
    decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
    if head is None or decoder is None:
        raise InputError(
            f"{type(causal_lm).__name__}: cannot find the LM head / decoder; use model.loss naive", field="model.loss"
        )
    return head, decoder, getattr(text_config, "final_logit_softcapping", None)


def _targets(
    hidden: torch.Tensor, labels: torch.Tensor, count: int | None = None, multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states at the positions that predict a target, first and in order: ``([n, hidden], [n])``.

    No boolean-mask indexing (a host sync and a data-dependent shape): a stable sort puts the target positions first
    and ``n`` is the batch's host-side target count (``num_targets`` from the collator) rounded up to a multiple of
    ``multiple`` (the chunk size), so every chunk has the same shape; the few extra rows are ignored positions
    (label -100) that the cross-entropy skips. Without ``count`` it is read from the labels (one sync)."""
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # a view: position t predicts labels[t + 1]
    flat_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1)
    if count is None:
        count = int((flat_labels != IGNORE_INDEX).sum())
    n = min(flat_labels.numel(), -(-max(count, 1) // multiple) * multiple)
    order = torch.argsort((flat_labels == IGNORE_INDEX).to(torch.uint8), stable=True)[:n]
    return flat_hidden.index_select(0, order), flat_labels.index_select(0, order)


def _chunk_nll(
    head: torch.nn.Module, softcap: float | None, hidden: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")


def decoder_hidden(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.nn.Module, float | None]:
    head, decoder, softcap = _head_and_decoder(model)
    out = decoder(**model_inputs(batch))
    return out.last_hidden_state, head, softcap


def model_inputs(batch: Batch) -> dict[str, torch.Tensor | int]:
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch.get("attention_mask"),
        "position_ids": batch.get("position_ids"),
        "use_cache": False,
        **{key: batch[key] for key in FLASH_KWARGS if key in batch},
    }  # a flattened packed batch's boundaries


def naive_nll_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    logits = model(**model_inputs(batch)).logits
    # as HF's ForCausalLMLoss: shift the labels (not the logits, which would copy them), upcast, one cross-entropy
    labels = F.pad(batch["labels"], (0, 1), value=IGNORE_INDEX)[:, 1:]
    return F.cross_entropy(
        logits.float().view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def chunked_nll_sum(model: torch.nn.Module, batch: Batch, chunk_size: int = 1024) -> torch.Tensor:
    hidden, head, softcap = decoder_hidden(model, batch)
    hidden, target = _targets(hidden, batch["labels"], batch.get("num_targets"), chunk_size)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], target[start : start + chunk_size]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_nll, head, softcap, h, t, use_reentrant=False)
        else:
            total = total + _chunk_nll(head, softcap, h, t)
    return total


def liger_nll_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    hidden, head, softcap = decoder_hidden(model, batch)
    if not isinstance(head, torch.nn.Linear) or type(head) is not torch.nn.Linear:
        raise InputError(
            f"model.loss liger needs a plain linear LM head, not {type(head).__name__} (an adapter on "
            "lm_head?); use chunked",
            field="model.loss",
        )
    hidden, target = _targets(hidden, batch["labels"], batch.get("num_targets"), LIGER_ROWS)
    loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum", softcap=softcap)
    return loss_fn(head.weight, hidden.contiguous(), target, head.bias)


def token_nll_sum(
    model: torch.nn.Module, batch: Batch, impl: str = "naive", chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of token NLLs in float32, number of target tokens)`` of one micro-batch; ``impl`` is resolved."""
    tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    if impl == "naive":
        total = naive_nll_sum(model, batch)
    elif impl == "chunked":
        total = chunked_nll_sum(model, batch, chunk_size)
    elif impl == "liger":
        total = liger_nll_sum(model, batch)
    else:
        raise InputError(f"unresolved loss implementation {impl!r}", field="model.loss")
    return total, tokens


class TokenMean(Metric):
    """Weighted mean (``val/loss``: per-token NLL over the epoch and ranks) with no host sync per update, unlike
    torchmetrics' ``MeanMetric``, whose NaN check reads a value back every batch (and whose ``nan_strategy:
    disable`` drops the weights)."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("value_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: torch.Tensor) -> None:
        self.value_sum += (value.double() * weight).sum()
        self.weight_sum += torch.as_tensor(weight, device=self.weight_sum.device).double().sum()

    def compute(self) -> torch.Tensor:
        return (self.value_sum / self.weight_sum).float()
