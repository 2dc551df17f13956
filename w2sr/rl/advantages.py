"""GRPO advantages from the rewards of each group (pure functions of tensors; no model, no Lightning).

Rewards are a flat tensor laid out group by group (``num_generations`` completions of one problem next to each
other). ``NaN`` marks a completion the verifier could not grade: it is left out of its group's mean and std and its
advantage is 0, as TRL 1.16 does for unscorable completions. With ``scale_rewards``:

* ``group`` (TRL default): ``A = (r - mean_group) / (std_group + 1e-4)``, std with Bessel's correction;
* ``batch``: the same with the std of all the step's rewards (PPO-Lite);
* ``none`` (Dr. GRPO): ``A = r - mean_group``.

A group whose rewards are all equal has advantage 0 for every completion: it contributes no gradient (only the KL
term, when ``beta`` > 0). Exercised by ``pytest tests/rl/test_advantages.py tests/rl/test_agreement_trl.py``.
"""

from __future__ import annotations

import torch

STD_EPS = 1e-4  # TRL 1.16 (SimpleRL-Zoo / verl use 1e-6)


def nan_std(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Standard deviation with Bessel's correction, ignoring NaNs (NaN where fewer than two values)."""
    keep = dim if dim is not None else tuple(range(values.dim()))
    mean = torch.nanmean(values, dim=keep, keepdim=True)
    count = (~torch.isnan(values)).sum(dim=keep, keepdim=True)
    variance = torch.nansum((values - mean) ** 2, dim=keep, keepdim=True) / (count - 1).clamp(min=1)
    std = torch.where(count > 1, variance.sqrt(), torch.full_like(variance, float("nan")))
    return std.squeeze(keep) if dim is not None else std.reshape(())


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """Per-completion advantages (see the module docstring); ``rewards`` is ``[groups * num_generations]``."""
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not form groups of {num_generations}")
    grouped = rewards.float().view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    advantages = grouped - mean
    if scale_rewards == "group":
        advantages = advantages / (nan_std(grouped, dim=1).unsqueeze(1) + STD_EPS)
    elif scale_rewards == "batch":
        advantages = advantages / (nan_std(grouped) + STD_EPS)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards must be group, batch or none, not {scale_rewards!r}")
    return torch.nan_to_num(advantages, nan=0.0).view(-1)


def equal_reward_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Per group: True when its gradable rewards are all equal (no learning signal from the group)."""
    grouped = rewards.float().view(-1, num_generations)
    low = torch.where(torch.isnan(grouped), torch.full_like(grouped, float("inf")), grouped).min(dim=1).values
    high = torch.where(torch.isnan(grouped), torch.full_like(grouped, float("-inf")), grouped).max(dim=1).values
    return ~(high > low)
