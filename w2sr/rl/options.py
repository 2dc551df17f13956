"""The RL options of ``w2sr fit`` with ``model: w2sr.rl.GRPOStudent``: the ``model.rl`` group.

Every default names its source: TRL 1.16's ``GRPOConfig`` unless stated otherwise (the paper-scale SimpleRL-Zoo
settings are in ``lightning_configs/paper/rl_grpo_qwen2.5-math-7b.yaml``). Exercised by
``pytest tests/rl/test_options.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from w2sr.generation.vllm_options import VLLMOptions
from w2sr.records.jsonl import InputError
from w2sr.records.options import as_options, document_fields
from w2sr.verification.extract import GRADERS

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ScaleRewards = Literal["group", "batch", "none"]
RolloutBackend = Literal["hf", "vllm"]
Grader = Literal["paper", "default", "lenient"]
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


@document_fields
@dataclass
class RLOptions:
    """GRPO: rollouts, rewards, advantages and the clipped policy loss (``model.rl.*``)."""

    num_generations: int = 8
    """Completions sampled per problem (a group; the advantage baseline is the group's mean reward). TRL default 8."""

    temperature: float = 1.0
    """Sampling temperature of the rollouts; the log-probabilities in the loss use the same temperature, as TRL
    does. TRL default 1.0 (SimpleRL-Zoo: 1.0)."""

    top_p: float = 1.0
    """Nucleus sampling of the rollouts (1 = off). TRL default 1.0."""

    max_new_tokens: int = 512
    """Most tokens generated per completion; a completion that reaches it without an end-of-turn token is
    truncated. TRL's ``max_completion_length`` default 512."""

    backend: RolloutBackend = "hf"
    """Rollout engine: ``hf`` (Hugging Face generate on the policy itself, any device) or ``vllm`` (a vLLM engine in
    the same process, the policy's weights pushed to it after each optimizer step). w2sr default ``hf`` (runs
    everywhere)."""

    vllm: VLLMOptions = field(default_factory=VLLMOptions)
    """The in-process engine of ``backend: vllm`` (the generation stage's ``--vllm.*`` options: dtype,
    gpu_memory_utilization (on a GPU shared with training: e.g. 0.3, TRL's colocate default), max_model_len, ...)."""

    loss_type: LossType = "dapo"
    """How token losses are aggregated: ``grpo`` (mean over sequences of each sequence's token mean), ``bnpo``
    (token mean of each micro-batch), ``dr_grpo`` (sum / (sequences x max_new_tokens), Dr. GRPO), ``dapo`` (sum /
    completion tokens of the whole optimizer step on all ranks, DAPO). TRL default ``dapo``."""

    scale_rewards: ScaleRewards = "group"
    """Divide the advantage (reward minus the group mean) by the group's reward std (``group``), the whole step's
    (``batch``), or not at all (``none``: Dr. GRPO). TRL default ``group`` (std + 1e-4)."""

    epsilon: float = 0.2
    """Lower clip of the probability ratio (1 - epsilon). TRL default 0.2 (SimpleRL-Zoo: 0.2)."""

    epsilon_high: float | None = None
    """Upper clip (1 + epsilon_high); ``null`` = ``epsilon``. DAPO's clip-higher uses 0.28. TRL default None."""

    beta: float = 0.0
    """Weight of the KL penalty to the frozen reference (k3 estimator, added per token). With LoRA the reference is
    the base with the adapter disabled; with full fine-tuning a frozen copy of the initial weights. TRL default 0.0
    (SimpleRL-Zoo: 1e-4 up to 14B)."""

    kl_bias_correction: bool = True
    """Multiply the per-token KL by the probability ratio (DeepSeek-V3.2), which makes its gradient the unbiased
    reverse-KL gradient; it changes the gradient (not the value) even on-policy. TRL 1.16 default true
    (``use_bias_correction_kl``); SimpleRL-Zoo / verl: false (plain k3)."""

    num_iterations: int = 1
    """Optimizer steps on each step's rollouts (mu): >1 reuses them with the log-probabilities of the policy that
    generated them (the clipped ratio then departs from 1). TRL default 1."""

    mask_truncated: bool = False
    """``true``: completions without an end-of-turn token (cut at ``max_new_tokens``) are left out of the loss (DAPO's
    overlong filtering; TRL's ``mask_truncated_completions``); ``false``: they stay in and are scored 0 (reward 0,
    whatever they contain). TRL default false."""

    grader: Grader = "paper"
    """The verifier's preset for rewards (``w2sr.verification``): ``paper`` (last box vs gold), ``default``,
    ``lenient``. Reward 1 for a correct answer, 0 otherwise; an answer the grader cannot decide (unparseable gold,
    timeout, crash) gets no advantage and is counted (``rl/ungradable``). w2sr default ``paper`` (the issue)."""

    grader_timeout: float = 5.0
    """Seconds per answer in the verifier's killable worker (then retried once under 3x before ``timeout``)."""

    generation_batch_size: int = 64
    """Completions generated together by the ``hf`` backend (memory; results do not depend on it: every completion
    has its own seed)."""

    seed: int = 0
    """Rollout seed: completion ``g`` of problem ``p`` in epoch ``e`` is sampled from its own seed
    (``w2sr.generation.base.sample_seed``), so a resumed or re-sharded run regenerates identical rollouts."""

    def __post_init__(self) -> None:
        checks = [
            (self.num_generations >= 2, "num_generations", "must be at least 2 (the baseline is the group's mean)"),
            (self.temperature > 0, "temperature", "must be > 0 (greedy rollouts of a group are all the same)"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1"),
            (self.backend in ("hf", "vllm"), "backend", "must be hf or vllm"),
            (self.loss_type in LOSS_TYPES, "loss_type", f"must be one of {list(LOSS_TYPES)}"),
            (self.scale_rewards in SCALE_REWARDS, "scale_rewards", f"must be one of {list(SCALE_REWARDS)}"),
            (0 <= self.epsilon < 1, "epsilon", "must be in [0, 1)"),
            (self.epsilon_high is None or self.epsilon_high >= 0, "epsilon_high", "must be >= 0"),
            (self.beta >= 0, "beta", "must be >= 0"),
            (self.num_iterations >= 1, "num_iterations", "must be at least 1"),
            (self.grader in GRADERS, "grader", f"must be one of {list(GRADERS)}"),
            (self.grader_timeout > 0, "grader_timeout", "must be > 0 seconds"),
            (self.generation_batch_size >= 1, "generation_batch_size", "must be at least 1"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise InputError(f"{message}, got {getattr(self, name)!r}", field=f"model.rl.{name}")

    @property
    def clip_high(self) -> float:
        """The upper clip epsilon in use."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


def as_rl_options(value: RLOptions | dict) -> RLOptions:
    """``model.rl`` as given by the CLI (a dataclass) or restored from a checkpoint's hparams (a dict)."""
    if isinstance(value, RLOptions):
        return value
    value = dict(value)
    value["vllm"] = as_options(value.get("vllm"), VLLMOptions)
    return RLOptions(**value)
