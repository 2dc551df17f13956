"""Pre-flight per-GPU memory estimate of a GRPO step (``model: w2sr.rl.GRPOStudent``): policy + reference + rollout
engine (pure arithmetic: no torch import, no weights read).

It extends ``w2sr.training.memory`` (the SFT student's model, whose formulas and sources are there):

* **Policy training**: the SFT estimate for a micro-batch of ``data.batch_size x model.rl.num_generations /
  trainer.accumulate_grad_batches`` completions of ``prompt + model.rl.max_new_tokens`` tokens, with the logits of
  the completion tokens only (all at once: ``w2sr.rl.rollouts.token_logps`` keeps them for the backward pass).
* **Reference** (``beta`` > 0): none with LoRA (the base with the adapter disabled); with full fine-tuning a frozen
  copy of the initial weights on every GPU, unsharded, in the compute dtype (bf16 under ``bf16-mixed``: 2 bytes/param;
  else 4).
* **Rollouts**: ``hf``: the KV cache of ``model.rl.generation_batch_size`` sequences of prompt + completion in bf16
  (``2 x layers x kv width x 2`` bytes per token), the weights being the policy's own; ``vllm``: the engine's share of
  the GPU (``model.rl.vllm.gpu_memory_utilization``; vLLM's default 0.9 leaves nothing for training).

The prompt length is ``data.max_prompt_length`` (1,024 when unset, SimpleRL-Zoo's). Exercised by every RL
``w2sr fit`` and ``pytest tests/rl/test_memory_rl.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from w2sr.training.memory import Estimate, ModelShape, Plan, against_capacity, estimate, find_config, strategy_kind

DEFAULT_PROMPT_TOKENS = 1024
VLLM_DEFAULT_SHARE = 0.9


@dataclass(frozen=True)
class RolloutPlan:
    """The RL settings that add memory to an SFT step."""

    num_generations: int = 8
    problems: int = 8  # data.batch_size: problems per optimizer step and device
    accumulate: int = 1
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    completion_tokens: int = 512
    backend: str = "hf"  # hf | vllm
    generation_batch_size: int = 64
    reference: str = "none"  # none | adapter | copy
    reference_bytes: float = 2.0  # per parameter of a reference copy
    engine_share: float | None = None  # vllm gpu_memory_utilization

    @property
    def micro_rows(self) -> int:
        return max(1, self.problems * self.num_generations // max(1, self.accumulate))


def kv_bytes_per_token(shape: ModelShape) -> int:
    """bf16 keys and values of every layer for one token."""
    return 2 * shape.layers * shape.kv_width * 2


def rl_estimate(shape: ModelShape, plan: Plan, rollout: RolloutPlan, capacity: float | None) -> Estimate:
    """Per-GPU bytes of one GRPO step (see the module docstring)."""
    train = replace(
        plan,
        micro_batch=rollout.micro_rows,
        seq_len=rollout.prompt_tokens + rollout.completion_tokens,
        completion_tokens=rollout.completion_tokens,
    )
    base = estimate(shape, train)
    reference = rollout.reference_bytes * shape.params if rollout.reference == "copy" else 0.0
    if rollout.backend == "vllm":
        share = VLLM_DEFAULT_SHARE if rollout.engine_share is None else rollout.engine_share
        engine = share * capacity if capacity else 2.0 * shape.params
    else:
        rows = min(rollout.generation_batch_size, rollout.problems * rollout.num_generations)
        engine = rows * (rollout.prompt_tokens + rollout.completion_tokens) * kv_bytes_per_token(shape)
    return replace(base, reference=reference, rollout=engine)


def rollout_plan(model_hparams: Any, data_hparams: Any, accumulate: int, precision: str) -> RolloutPlan:
    """The RL settings of a run from its ``model`` / ``data`` hyper-parameters (dicts or namespaces)."""
    rl = dict(model_hparams.get("rl") or {})
    vllm = rl.get("vllm") or {}
    vllm = vllm if isinstance(vllm, dict) else vars(vllm)
    beta = float(rl.get("beta", 0.0))
    finetune = str(model_hparams.get("finetune", "lora"))
    reference = "none" if beta == 0 else ("adapter" if finetune == "lora" else "copy")
    return RolloutPlan(
        num_generations=int(rl.get("num_generations", 8)),
        problems=int(data_hparams.get("batch_size", 8)),
        accumulate=accumulate,
        prompt_tokens=int(data_hparams.get("max_prompt_length") or DEFAULT_PROMPT_TOKENS),
        completion_tokens=int(rl.get("max_new_tokens", 512)),
        backend=str(rl.get("backend", "hf")),
        generation_batch_size=int(rl.get("generation_batch_size", 64)),
        reference=reference,
        reference_bytes=2.0 if "16" in str(precision) else 4.0,
        engine_share=vllm.get("gpu_memory_utilization"),
    )


def rl_verdict(shape: ModelShape, plan: Plan, rollout: RolloutPlan, capacity: float | None) -> tuple[str, str | None]:
    """``(report line, refusal or None)``: refused when the estimate exceeds ``capacity`` by ``CLEAR_MARGIN``."""
    est = rl_estimate(shape, plan, rollout, capacity)
    line = (
        f"RL step memory estimate for {shape.params / 1e9:.2f}B parameters, {plan.finetune}, {plan.strategy} on "
        f"{plan.world_size} device(s), micro-batch {rollout.micro_rows} completions x "
        f"{rollout.prompt_tokens} + {rollout.completion_tokens} tokens, reference {rollout.reference}, "
        f"{rollout.backend} rollouts: {est.describe()}"
    )
    line, fits = against_capacity(line, est.total, capacity)
    if fits:
        return line, None
    tips = [
        "more micro-batches per step (--trainer.accumulate_grad_batches)",
        "fewer sequences generated at once (--model.rl.generation_batch_size)"
        if rollout.backend == "hf"
        else "a smaller engine share (--model.rl.vllm.gpu_memory_utilization, e.g. 0.3)",
        "activation checkpointing (--model.gradient_checkpointing true)",
        "LoRA (the reference is then the base: no copy)"
        if rollout.reference == "copy"
        else "QLoRA / a sharded strategy",
    ]
    return line, f"{line}: this will not fit. Options:\n  " + "\n  ".join(tips) + (
        "\n(set W2SR_SKIP_MEMORY_CHECK=1 to try anyway)"
    )


def rl_preflight(
    model_hparams: Any,
    data_hparams: Any,
    strategy: Any,
    shard_group: int,
    accumulate: int,
    precision: str,
    capacity: float | None,
) -> tuple[str | None, str | None]:
    """``(report line, refusal)`` for an RL ``w2sr fit``; ``(None, None)`` when the model's config.json is not at hand.
    ``shard_group``: the GPUs sharing sharded states (as ``w2sr.training.memory.preflight``)."""
    config = find_config(str(model_hparams.get("model_name_or_path") or ""))
    if config is None:
        return None, None
    try:
        shape = ModelShape.from_config(config)
    except (KeyError, TypeError, ValueError):
        return None, None
    kind, offload = strategy_kind(strategy)
    lora = model_hparams.get("lora") or {}
    plan = Plan(
        finetune=str(model_hparams.get("finetune", "lora")),
        quantization=str(model_hparams.get("quantization", "none")),
        strategy=kind,
        world_size=shard_group,
        checkpointing=bool(model_hparams.get("gradient_checkpointing")) or kind.startswith("fsdp"),
        offload_optimizer=offload,
        lora_r=int(lora.get("r", 16) if isinstance(lora, dict) else getattr(lora, "r", 16)),
        loss="naive",
    )
    return rl_verdict(shape, plan, rollout_plan(model_hparams, data_hparams, accumulate, precision), capacity)
