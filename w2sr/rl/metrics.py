"""What a GRPO run logs per optimizer step, summed over its micro-batches and ranks with one all-reduce.

Logged (Lightning ``self.log``, so CSV, TensorBoard and any other logger get them): ``train/loss``, ``rl/reward``
(mean reward of the gradable completions), ``rl/accuracy`` (share of completions graded correct),
``rl/equal_reward_groups`` (share of groups whose rewards are all equal: no learning signal), ``rl/ungradable``
(completions the verifier could not decide), ``rl/truncated`` (share cut at ``max_new_tokens``),
``rl/response_length`` (mean generated tokens), ``rl/clip_fraction``, ``rl/kl``, ``rl/entropy`` (token means over
the loss tokens), and ``rl/time_rollout`` / ``rl/time_scoring`` / ``rl/time_training`` (seconds of the step, mean over
ranks). Exercised by ``pytest tests/rl/test_module.py``.
"""

from __future__ import annotations

import torch

ROLLOUT_FIELDS = ("reward_sum", "gradable", "correct", "completions", "groups", "equal_groups", "ungradable",
                  "truncated", "generated_tokens")  # fmt: skip
STEP_FIELDS = ("loss", "loss_tokens", "clipped", "kl", "entropy", "time_rollout", "time_scoring", "time_training")
FIELDS = ROLLOUT_FIELDS + STEP_FIELDS


class StepMeter:
    """Local sums of one optimizer step (rollout figures once per generation, loss figures per micro-batch)."""

    def __init__(self) -> None:
        self.values = dict.fromkeys(FIELDS, 0.0)

    def add(self, **values: float | torch.Tensor) -> None:
        for name, value in values.items():
            self.values[name] = self.values[name] + value  # tensors stay on the device until the step's reduce

    def vector(self, device: torch.device) -> torch.Tensor:
        return torch.stack([torch.as_tensor(self.values[n], dtype=torch.float64, device=device) for n in FIELDS])

    def reset(self) -> None:
        self.values = dict.fromkeys(FIELDS, 0.0)


def step_metrics(totals: torch.Tensor, world_size: int) -> dict[str, float]:
    """The logged figures from the step's sums over all ranks (``totals`` in ``FIELDS`` order)."""
    t = dict(zip(FIELDS, totals.tolist()))

    def share(a: float, b: float) -> float:
        return a / b if b else float("nan")

    return {
        "train/loss": t["loss"] / world_size,
        "rl/reward": share(t["reward_sum"], t["gradable"]),
        "rl/accuracy": share(t["correct"], t["completions"]),
        "rl/equal_reward_groups": share(t["equal_groups"], t["groups"]),
        "rl/ungradable": t["ungradable"],
        "rl/truncated": share(t["truncated"], t["completions"]),
        "rl/response_length": share(t["generated_tokens"], t["completions"]),
        "rl/clip_fraction": share(t["clipped"], t["loss_tokens"]),
        "rl/kl": share(t["kl"], t["loss_tokens"]),
        "rl/entropy": share(t["entropy"], t["loss_tokens"]),
        "rl/time_rollout": t["time_rollout"] / world_size,
        "rl/time_scoring": t["time_scoring"] / world_size,
        "rl/time_training": t["time_training"] / world_size,
    }
