"""The GRPO policy loss of one micro-batch (pure functions of tensors; no model, no Lightning).

Per completion token ``t`` with log-probability ``logp`` under the policy, ``old`` under the policy that generated
the rollout (``logp.detach()`` when rollouts are used once) and ``ref`` under the frozen reference:

    ratio = exp(logp - old);  l_t = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * kl
    k3 = exp(ref - logp) - (ref - logp) - 1                              (Schulman's unbiased, low-variance KL)
    kl = ratio * k3 with ``kl_bias_correction`` (TRL 1.16's default, DeepSeek-V3.2: the unbiased reverse-KL
         gradient; the value is unchanged when ratio = 1, the gradient is not), else k3

``mask`` is 1 on the completion's tokens up to and including its first end-of-turn token and 0 after it (and on a
truncated completion when ``mask_truncated``). The micro-batch's loss ``l_mb`` aggregates them as TRL 1.16's
``GRPOTrainer._compute_loss`` does, so that the optimizer step's objective is the sum of ``l_mb`` over the step's
micro-batches, averaged over ranks:

* ``grpo``: mean over the micro-batch's sequences of (sum_t l_t / |o_i|), divided by ``accumulate``;
* ``bnpo``: sum l_t / tokens of the micro-batch, divided by ``accumulate``;
* ``dr_grpo``: sum l_t / (sequences x max_new_tokens), divided by ``accumulate``;
* ``dapo``: sum l_t / (completion tokens of the whole optimizer step over all ranks / world_size): the step's
  gradient is exactly that of (sum of all its token losses) / (all its tokens), whatever the split into micro-batches
  and ranks.

Lightning divides a returned loss by ``accumulate_grad_batches`` and DDP averages over ranks, so
``w2sr.rl.module.GRPOStudent`` returns ``accumulate x l_mb``. Exercised by ``pytest tests/rl/test_loss.py
tests/rl/test_agreement_trl.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossStats:
    """Sums over the micro-batch's loss tokens (detached), for token-weighted means over a step and its ranks."""

    tokens: torch.Tensor
    """Tokens in the loss (the mask's sum)."""
    clipped: torch.Tensor
    """Tokens whose ratio was clipped in the direction of their advantage (TRL's ``clip_ratio/region_mean``)."""
    kl: torch.Tensor
    """Sum of the per-token k3 KL to the reference (0 when ``beta`` is 0)."""


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token ``exp(ref - logp) - (ref - logp) - 1`` (>= 0; 0 where the two agree)."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def per_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    epsilon: float,
    epsilon_high: float,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    kl_bias_correction: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(l_t, clipped, kl)`` per token (``[rows, tokens]``); ``advantages`` is ``[rows]``."""
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages.unsqueeze(1)
    loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high) * adv)
    clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference log-probabilities")
        kl = k3_kl(logps, ref_logps)
        if kl_bias_correction:
            kl = kl * ratio
        loss = loss + beta * kl
    return loss, clipped, kl


def aggregate(
    token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    *,
    accumulate: int = 1,
    world_size: int = 1,
    step_tokens: float | torch.Tensor | None = None,
    max_new_tokens: int | None = None,
) -> torch.Tensor:
    """The micro-batch's loss ``l_mb`` (see the module docstring)."""
    mask = mask.to(token_loss.dtype)
    total = (token_loss * mask).sum()
    if loss_type == "grpo":
        return ((token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulate
    if loss_type == "bnpo":
        return total / mask.sum().clamp(min=1.0) / accumulate
    if loss_type == "dr_grpo":
        if max_new_tokens is None:
            raise ValueError("dr_grpo needs max_new_tokens")
        return total / (token_loss.size(0) * max_new_tokens) / accumulate
    if loss_type == "dapo":
        if step_tokens is None:
            raise ValueError("dapo needs the completion tokens of the whole step (step_tokens)")
        step = torch.as_tensor(step_tokens, dtype=token_loss.dtype, device=token_loss.device)
        return total / (step.clamp(min=1.0) / world_size)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def grpo_loss(
    logps: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    loss_type: str,
    epsilon: float,
    epsilon_high: float,
    beta: float = 0.0,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    kl_bias_correction: bool = True,
    accumulate: int = 1,
    world_size: int = 1,
    step_tokens: float | torch.Tensor | None = None,
    max_new_tokens: int | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """``(l_mb, stats)`` of one micro-batch: :func:`per_token_loss` then :func:`aggregate`."""
    token_loss, clipped, kl = per_token_loss(
        logps, old_logps, advantages, epsilon, epsilon_high, beta, ref_logps, kl_bias_correction
    )
    loss = aggregate(
        token_loss,
        mask,
        loss_type,
        accumulate=accumulate,
        world_size=world_size,
        step_tokens=step_tokens,
        max_new_tokens=max_new_tokens,
    )
    weight = mask.to(torch.float32)
    stats = LossStats(
        tokens=weight.sum(),
        clipped=(clipped.to(torch.float32) * weight).sum(),
        kl=(kl.detach().float() * weight).sum() if kl is not None else torch.zeros((), device=logps.device),
    )
    return loss, stats
