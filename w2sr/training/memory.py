"""Pre-flight per-GPU memory estimate for ``w2sr fit`` (pure arithmetic: no torch import, no weights read).

``w2sr fit`` calls :func:`preflight` before loading any weights: it reads the student's ``config.json`` (a local
folder or the Hugging Face cache), counts the parameters, prints the expected memory per GPU and exits with code 2
and suggestions when the run clearly cannot fit (``W2SR_SKIP_MEMORY_CHECK=1`` skips the refusal).

The model (bytes per GPU, P = parameters, N = GPUs sharing the states, A = LoRA parameters):

* **Full fine-tuning** keeps fp32 master weights (``model.dtype: auto``) with bf16 autocast, as the paper's mixed
  precision does: weights 4P, gradients 4P, AdamW 8P (``exp_avg`` + ``exp_avg_sq`` in fp32) = 16 bytes/param, the
  figure of the ZeRO paper (Rajbhandari et al. 2020, section 3.1). DDP replicates all of it. FSDP ``FULL_SHARD`` and
  ZeRO-3 divide it by N and add a working set: the root unit (embeddings, head, final norm) gathered in bf16 for the
  whole step plus three decoder layers in bf16 (the one computing, the one prefetched, its unsharded gradient).
  ZeRO-2 / FSDP ``SHARD_GRAD_OP`` keep bf16 weights whole (2P) and shard gradients and fp32 master + AdamW
  (14P / N). Optimizer CPU offload removes master weights and AdamW state from the GPU.
* **LoRA** freezes the base in bf16 (2 bytes/param) and trains fp32 adapters (16 bytes per adapter parameter);
  **QLoRA** stores the decoder's linear layers in NF4 with double quantization: 4 bits + 0.127 bits of block
  constants = 0.516 bytes/param (Dettmers et al. 2023, section 3); embeddings, head and norms stay in bf16.
* **Activations** per decoder layer and token, bf16, SDPA/flash attention (no s^2 score matrix), no dropout,
  adapted from Korthikanti et al. 2022 ("Reducing Activation Recomputation", eq. 1: sbh(34 + 5as/h) for a GPT layer)
  to a gated MLP of width I and grouped KV heads of total width kv: ``18h + 8I + 6kv`` bytes (attention and rotary
  inputs 8h + 6kv, two RMSNorms with their fp32 upcasts 10h, gated MLP 2h + 8I). With activation checkpointing only
  each layer's input (2h) is kept, plus one layer recomputed in the backward pass. The loss adds 12 bytes per
  token and vocabulary entry (bf16 logits, their fp32 copy, the fp32 log-softmax and its gradient) for the tokens
  whose logits exist at once: all of them with ``model.loss: naive`` (HF's loss), one chunk of
  ``model.loss_chunk_size`` tokens with ``chunked``, and Liger's chunk with ``liger`` (the next power of two of
  tokens / ceil(vocabulary / hidden), as ``LigerFusedLinearCrossEntropyFunction`` picks it).
* **Overhead**: 2 GiB per GPU for the CUDA context, NCCL buffers and allocator fragmentation.

Checked against the peaks measured on one H200 (FIELD_NOTES: QLoRA of a Qwen2.5-0.5B shape, r=64, batch 8 x 2,048,
HF's loss): measured 29.4-30.6 GiB with checkpointing and 48.9 GiB without; estimated (without the 2 GiB overhead,
which torch's allocator peak does not count) 30.3 and 49.2 GiB. The logits term dominates there, as it does for the
7B student at 4,096 tokens; a chunked or fused loss removes most of it.
Exercised by ``pytest tests/training/test_memory.py`` and every ``w2sr fit``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from w2sr.records.options import as_dict

GIB = 1024**3
NF4_BYTES = 0.516  # 4-bit codes + double-quantized absmax per 64-block (QLoRA paper)
OVERHEAD_BYTES = 2 * GIB  # CUDA context, NCCL, allocator fragmentation
LOGIT_BYTES = 12  # per token x vocab entry: bf16 logits + fp32 copy + fp32 log-softmax + gradient
CLEAR_MARGIN = 1.10  # refuse only when the estimate exceeds the GPU by more than 10%
SHARDED = {"fsdp", "zero3"}


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that fix its parameter count (from a Hugging Face config.json)."""

    hidden: int
    layers: int
    vocab: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool = False
    qkv_bias: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        config = config.get("text_config", config) if "hidden_size" not in config else config
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        qkv_bias = bool(config.get("attention_bias", config.get("model_type") == "qwen2"))
        return cls(
            hidden=hidden,
            layers=int(config["num_hidden_layers"]),
            vocab=int(config["vocab_size"]),
            intermediate=int(config["intermediate_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            tied=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
        )

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of the seven linear layers of one decoder layer: q, k, v, o, gate, up, down."""
        h, i = self.hidden, self.intermediate
        return [(h, self.q_width), (h, self.kv_width), (h, self.kv_width), (self.q_width, h), (h, i), (h, i), (i, h)]

    @property
    def layer_linear_params(self) -> int:
        bias = self.q_width + 2 * self.kv_width if self.qkv_bias else 0
        return sum(a * b for a, b in self.linear_shapes()) + bias

    @property
    def layer_params(self) -> int:
        return self.layer_linear_params + 2 * self.hidden  # two RMSNorm weights

    @property
    def root_params(self) -> int:
        """Parameters outside the decoder layers: embeddings, LM head (unless tied), final norm."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.root_params

    def lora_params(self, r: int) -> int:
        """Adapter parameters of rank ``r`` on all seven linear layers of every decoder layer (``all-linear``)."""
        return self.layers * r * sum(a + b for a, b in self.linear_shapes())


@dataclass(frozen=True)
class Plan:
    """One fine-tuning setting to estimate."""

    finetune: str = "lora"  # lora | full
    quantization: str = "none"  # none | nf4
    strategy: str = "ddp"  # single | ddp | fsdp | fsdp_grad_op | zero2 | zero3
    world_size: int = 1  # GPUs sharing the sharded states
    micro_batch: int = 1
    seq_len: int = 4096
    checkpointing: bool = False
    offload_optimizer: bool = False
    lora_r: int = 16
    loss: str = "naive"  # naive | chunked | liger (``auto`` resolved by the caller)
    loss_chunk: int = 1024  # tokens per chunk of the chunked loss
    completion_tokens: int = 0  # RL: logits exist for these last tokens of every row only (memory_rl.py)


@dataclass(frozen=True)
class Estimate:
    """Bytes per GPU by kind."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float = OVERHEAD_BYTES
    reference: float = 0.0  # RL: a frozen reference copy (memory_rl.py)
    rollout: float = 0.0  # RL: the rollout engine (KV cache, or a vLLM engine's share)

    @property
    def total(self) -> float:
        parts = (self.weights, self.gradients, self.optimizer, self.activations, self.overhead, self.reference)
        return sum(parts) + self.rollout

    def describe(self) -> str:
        names = ("weights", "gradients", "optimizer", "activations", "overhead", "reference", "rollout")
        parts = ", ".join(f"{n} {getattr(self, n) / GIB:.1f}" for n in names if n in names[:5] or getattr(self, n))
        return f"{self.total / GIB:.1f} GiB per GPU ({parts})"


def activation_bytes(shape: ModelShape, plan: Plan) -> float:
    tokens = plan.micro_batch * plan.seq_len
    layer = tokens * (18 * shape.hidden + 8 * shape.intermediate + 6 * shape.kv_width)
    stored = shape.layers * tokens * 2 * shape.hidden + layer if plan.checkpointing else shape.layers * layer
    return stored + logit_tokens(shape, plan) * shape.vocab * LOGIT_BYTES


def logit_tokens(shape: ModelShape, plan: Plan) -> int:
    """How many tokens' logits the loss holds at once (see the module docstring)."""
    tokens = plan.micro_batch * plan.seq_len
    if plan.completion_tokens:
        return plan.micro_batch * plan.completion_tokens
    if plan.loss == "chunked":
        return min(tokens, plan.loss_chunk)
    if plan.loss == "liger":
        per = -(-tokens // -(-shape.vocab // shape.hidden))  # ceil(tokens / ceil(vocab / hidden))
        return min(tokens, 1 << max(0, per - 1).bit_length())
    return tokens


def estimate(shape: ModelShape, plan: Plan) -> Estimate:
    """Per-GPU memory of ``plan`` for a model of ``shape`` (see the module docstring for the formula)."""
    n = max(1, plan.world_size) if plan.strategy in SHARDED | {"zero2", "fsdp_grad_op"} else 1
    p = shape.params
    working = 2 * shape.root_params + 3 * 2 * shape.layer_params if plan.strategy in SHARDED else 0
    if plan.finetune == "full":
        if plan.strategy in SHARDED:
            weights, grads, optim = 4 * p / n + working, 4 * p / n, 8 * p / n
        elif plan.strategy in ("zero2", "fsdp_grad_op"):
            weights, grads, optim = 2 * p, 2 * p / n, 12 * p / n
        else:
            weights, grads, optim = 4 * p, 4 * p, 8 * p
        if plan.offload_optimizer:
            optim = 0.0
            if plan.strategy in ("zero2", "fsdp_grad_op"):
                grads = 0.0  # ZeRO-Offload keeps fp32 gradients in host memory too
    else:
        linear = shape.layers * shape.layer_linear_params
        base = NF4_BYTES * linear + 2 * (p - linear) if plan.quantization == "nf4" else 2 * p
        adapter = shape.lora_params(plan.lora_r)
        if plan.strategy in SHARDED:
            weights = base / n + 4 * adapter / n + working
            grads, optim = 4 * adapter / n, 8 * adapter / n
        else:
            weights, grads, optim = base + 4 * adapter, 4 * adapter, 8 * adapter
        if plan.offload_optimizer:
            optim = 0.0
    return Estimate(weights=weights, gradients=grads, optimizer=optim, activations=activation_bytes(shape, plan))


def suggestions(shape: ModelShape, plan: Plan, capacity: float) -> list[str]:
    """Alternatives that fit ``capacity`` bytes, each with its estimate."""
    options = []
    if plan.finetune == "full":
        options.append(
            (
                "QLoRA (--model.finetune lora --model.quantization nf4)",
                replace(plan, finetune="lora", quantization="nf4", strategy="ddp"),
            )
        )
        if plan.strategy not in SHARDED:
            options.append(
                ("ZeRO-3 (strategy w2sr_deepspeed_stage_3) or FSDP (strategy fsdp)", replace(plan, strategy="zero3"))
            )
        options.append(
            (
                "twice the GPUs (--trainer.devices / --trainer.num_nodes) with FSDP or ZeRO-3",
                replace(
                    plan,
                    strategy="zero3" if plan.strategy not in SHARDED else plan.strategy,
                    world_size=2 * max(1, plan.world_size),
                ),
            )
        )
        if not plan.offload_optimizer:
            options.append(
                (
                    "CPU offload of the optimizer (DeepSpeed offload_optimizer: true, FSDP cpu_offload)",
                    replace(plan, offload_optimizer=True),
                )
            )
    elif plan.quantization != "nf4":
        options.append(("QLoRA (--model.quantization nf4)", replace(plan, quantization="nf4")))
    if not plan.checkpointing:
        options.append(
            ("activation checkpointing (--model.gradient_checkpointing true)", replace(plan, checkpointing=True))
        )
    if plan.micro_batch > 1:
        options.append(
            (
                "micro-batch 1 (--data.batch_size 1, raise accumulate_grad_batches to keep the global batch)",
                replace(plan, micro_batch=1),
            )
        )
    lines = []
    for text, alt in options:
        total = estimate(shape, alt).total
        lines.append(f"{text}: {total / GIB:.1f} GiB" + ("" if total <= capacity else " (still too much)"))
    return lines


def against_capacity(line: str, total: float, capacity: float | None) -> tuple[str, bool]:
    """The report ``line`` with the capacity added, and whether ``total`` bytes fit it (within ``CLEAR_MARGIN``:
    only a clear overshoot is refused); no capacity known: the line as is, and it fits."""
    if capacity is None:
        return line, True
    return f"{line} of {capacity / GIB:.1f} GiB", total <= capacity * CLEAR_MARGIN


def verdict(shape: ModelShape, plan: Plan, capacity: float | None) -> tuple[str, str | None]:
    """``(report line, refusal or None)``; refuses when the estimate exceeds ``capacity`` by ``CLEAR_MARGIN``."""
    est = estimate(shape, plan)
    line = (
        f"memory estimate for {shape.params / 1e9:.2f}B parameters, {plan.finetune}"
        f"{' nf4' if plan.quantization == 'nf4' else ''}, {plan.strategy} on {plan.world_size} device(s), "
        f"micro-batch {plan.micro_batch} x {plan.seq_len} tokens"
        f"{', activation checkpointing' if plan.checkpointing else ''}, {plan.loss} loss: {est.describe()}"
    )
    line, fits = against_capacity(line, est.total, capacity)
    if fits:
        return line, None
    tips = "\n  ".join(suggestions(shape, plan, capacity))
    return line, (f"{line}: this will not fit. Options:\n  {tips}\n(set W2SR_SKIP_MEMORY_CHECK=1 to try anyway)")


# ------------------------------------------------------------------------------------------------ inputs
def find_config(model_name_or_path: str) -> dict[str, Any] | None:
    """The model's config.json from a local folder or the Hugging Face cache (never the network); None if absent."""
    local = Path(model_name_or_path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    if model_name_or_path.count("/") != 1:
        return None
    cache = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    repo = cache / ("models--" + model_name_or_path.replace("/", "--")) / "snapshots"
    found = sorted(repo.glob("*/config.json"), key=lambda p: p.stat().st_mtime) if repo.is_dir() else []
    return json.loads(found[-1].read_text()) if found else None


def strategy_kind(strategy: Any) -> tuple[str, bool]:
    """``(kind, offload_optimizer)`` of a Lightning strategy instance, read by duck typing (no torch import)."""
    name = type(strategy).__name__
    if "DeepSpeed" in name:
        config = getattr(strategy, "config", None) or {}
        zero = config.get("zero_optimization", {})
        offload = bool(zero.get("offload_optimizer"))
        return ("zero3" if zero.get("stage") == 3 else "zero2" if zero.get("stage") in (1, 2) else "ddp"), offload
    if "FSDP" in name:
        sharding = str(getattr(strategy, "sharding_strategy", "FULL_SHARD")).rsplit(".", 1)[-1]
        offload = bool(getattr(getattr(strategy, "cpu_offload", None), "offload_params", False))
        kind = {"SHARD_GRAD_OP": "fsdp_grad_op", "NO_SHARD": "ddp", "_HYBRID_SHARD_ZERO2": "fsdp_grad_op"}
        return kind.get(sharding, "fsdp"), offload
    if "DDP" in name:
        return "ddp", False
    return "single", False


def preflight(
    model_hparams: Any,
    batch_size: int,
    seq_len: int,
    strategy: Any,
    world_size: int,
    capacity: float | None,
    shard_group: int | None = None,
) -> tuple[str | None, str | None]:
    """``(report line, refusal)`` for ``w2sr fit``; ``(None, None)`` when the model's config.json is not at hand.

    ``shard_group`` is how many GPUs share the sharded states (default ``world_size``; FSDP ``HYBRID_SHARD`` shards
    within a node only).
    """
    config = find_config(str(model_hparams.get("model_name_or_path") or ""))
    if config is None:
        return None, None
    try:
        shape = ModelShape.from_config(config)
    except (KeyError, TypeError, ValueError):
        return None, None
    kind, offload = strategy_kind(strategy)
    r = as_dict(model_hparams.get("lora")).get("r", 16)
    plan = Plan(
        finetune=str(model_hparams.get("finetune", "lora")),
        quantization=str(model_hparams.get("quantization", "none")),
        strategy=kind,
        world_size=shard_group or world_size,
        micro_batch=batch_size,
        seq_len=seq_len,
        checkpointing=bool(model_hparams.get("gradient_checkpointing")) or kind.startswith("fsdp"),
        offload_optimizer=offload,
        lora_r=int(r),
        loss=resolve_loss(model_hparams, capacity is not None),
        loss_chunk=int(model_hparams.get("loss_chunk_size") or 1024),
    )
    return verdict(shape, plan, capacity)


def resolve_loss(model_hparams: Any, on_cuda: bool) -> str:
    """``model.loss`` as ``w2sr.training.losses.resolve_loss_impl`` will resolve it (``auto``: liger on CUDA when
    liger-kernel is importable, else chunked), without importing torch."""
    from importlib.util import find_spec

    loss = str(model_hparams.get("loss") or "auto")
    if loss == "auto":
        return "liger" if on_cuda and find_spec("liger_kernel") is not None else "chunked"
    return loss
