"""The vLLM engine's options (``--vllm.*``) and the checks made before an engine starts.

Everything a user can get wrong at start-up is checked here, before ``vllm.LLM`` is built, so it ends with exit 2
and one line naming the option (an engine that fails in its own process only says "Engine core initialization
failed"): a missing model, an unknown dtype, a ``max_model_len`` over the model's context, a KV cache too small for
one sequence of ``max_model_len`` tokens. Errors the engine still raises at start-up are turned into the same kind
of line by :func:`startup_error`.

Precision: ``dtype`` defaults to w2sr's own resolution of ``model.dtype`` (``auto`` = bfloat16 on a GPU that has
it, else float32), exactly what the HF backend loads; vLLM's own ``auto`` would downcast float32 checkpoints to
bfloat16 and the backends would disagree.

Start-up: on a CPU the engine runs eagerly unless ``--vllm.enforce_eager false`` (vLLM's compilation took minutes
there); on a GPU vLLM's default (compiled, CUDA graphs) stays.

Memory: on a GPU the KV cache is vLLM's default share of GPU memory (``gpu_memory_utilization``, 0.9). On vLLM's CPU
backend that option reserves a share of the whole machine's RAM and fails whenever other processes hold some; so on a
CPU w2sr sizes the cache itself (``kv_cache_memory_bytes``, vLLM's own option): room for 4 sequences of
``max_model_len`` tokens, at least 256 MiB, at most a quarter of the free RAM (never less than one sequence).
Exercised by ``pytest tests/generation/test_vllm_backend.py tests/generation/test_vllm_real.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from w2sr.records.jsonl import InputError
from w2sr.records.options import check_range, document_fields

if TYPE_CHECKING:
    from transformers import PretrainedConfig

INSTALL_HINT = 'pip install "w2sr[vllm]"'
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
DTYPES = {"auto", "float32", "float16", "bfloat16"}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
MiB = 1 << 20
CPU_KV_SEQUENCES = 4
CPU_KV_MIN_BYTES = 256 * MiB


@document_fields
@dataclass
class VLLMOptions:
    """The vLLM engine (``--vllm.*``); unset values default to what the model and adapter need."""

    tensor_parallel_size: int = 1
    """GPUs one engine shards the model over."""
    gpu_memory_utilization: float | None = None
    """share of GPU memory the engine may take, in (0, 1] (default vLLM's, 0.9; GPU only)."""
    kv_cache_memory_bytes: int | None = None
    """the KV cache size in bytes, overriding the share (vLLM's option; default: w2sr's sizing on a CPU, unset on a
    GPU)."""
    max_model_len: int | None = None
    """the longest prompt plus completion in tokens (default: the model's context)."""
    dtype: str | None = None
    """weight dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16`` (default ``model.dtype`` as w2sr resolves
    it, the HF backend's; checked when the engine starts)."""
    enforce_eager: bool | None = None
    """run the model eagerly: no ``torch.compile`` / CUDA graphs (fast start, slower steps). Default: on on a CPU
    (vLLM's CPU build compiled SmolLM2-135M for 335 s at start-up against ~1 s eager, issue 28), vLLM's own (off)
    on a GPU; ``true`` / ``false`` overrides. Compiled graphs are cached under ``$VLLM_CACHE_ROOT/torch_compile_cache``
    (``~/.cache/vllm`` unless ``VLLM_CACHE_ROOT`` or ``XDG_CACHE_HOME`` says otherwise), so a second start with the
    same model and options is faster; the cache is vLLM's and may grow to gigabytes."""
    enable_prefix_caching: bool = True
    """reuse the KV cache of shared prompt prefixes (the n samples of a problem)."""
    seed: int = 0
    """the engine's seed."""
    enable_lora: bool | None = None
    """serve a LoRA adapter (default: when ``model.adapter_path`` is given)."""
    max_lora_rank: int | None = None
    """the largest adapter rank served (default: the adapter's, rounded up to a rank vLLM accepts)."""
    max_num_seqs: int | None = None
    """sequences one engine step may hold (default vLLM's)."""
    data_parallel_size: int = 1
    """engines started side by side, each on its own devices (GPUs: ``tensor_parallel_size`` each; a CPU: its own
    cores), each generating every N-th problem; outputs merged in problem order (``w2sr.generation.engines``)."""

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "kv_cache_memory_bytes", "max_model_len", "max_lora_rank", "max_num_seqs"):
            check_range(getattr(self, name), f"vllm.{name}", 1)
        check_range(self.gpu_memory_utilization, "vllm.gpu_memory_utilization", 0, 1, open_low=True, open_high=False)
        if self.data_parallel_size < 1:
            raise InputError(f"must be at least 1, got {self.data_parallel_size}", field="vllm.data_parallel_size")


def check_vllm() -> None:
    """Exit 2 (``InputError``) when vLLM is not installed, naming the extra to install."""
    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ValueError, ImportError):  # sys.modules["vllm"] is None / has no spec
        found = "vllm" in sys.modules and sys.modules["vllm"] is not None
    if not found:
        raise InputError(f"the vllm backend needs vLLM, which is not installed: {INSTALL_HINT}", field="backend")


def on_gpu() -> bool:
    """Whether vLLM runs on a CUDA GPU here (else its CPU backend)."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_dtype(model_dtype: str, override: str | None) -> str:
    """The dtype string given to vLLM: ``--vllm.dtype`` when set, else ``model.dtype`` with ``auto`` resolved as
    the HF backend resolves it (bfloat16 on a GPU that supports it, else float32)."""
    dtype = override or model_dtype
    field = "vllm.dtype" if override else "model.dtype"
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} for the vllm backend; choose one of {sorted(DTYPES)}", field=field)
    if dtype == "auto":
        import torch

        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "bfloat16" and on_gpu():
        import torch

        if not torch.cuda.is_bf16_supported():
            raise InputError("this GPU does not support bfloat16; pass float16 or float32", field=field)
    return dtype


def adapter_rank(adapter_path: str) -> int:
    """The LoRA rank ``r`` of a peft adapter folder, rounded up to a rank vLLM accepts."""
    config_file = Path(adapter_path) / "adapter_config.json"
    if not config_file.is_file():
        raise InputError(
            "not a peft adapter folder (no adapter_config.json)", path=adapter_path, field="model.adapter_path"
        )
    try:
        rank = int(json.loads(config_file.read_text(encoding="utf-8"))["r"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(
            f"cannot read the LoRA rank ({type(err).__name__}: {err})", path=config_file, field="r"
        ) from None
    return next((allowed for allowed in LORA_RANKS if allowed >= rank), rank)


def engine_kwargs(
    model_path: str,
    tokenizer_path: str | None,
    adapter_path: str | None,
    options: VLLMOptions,
    *,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    quantization: str = "none",
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` (``dtype`` as given: :func:`resolve_dtype` makes it concrete)."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        tokenizer=tokenizer_path or model_path,
        dtype=options.dtype or dtype,
        tensor_parallel_size=options.tensor_parallel_size,
        enable_prefix_caching=options.enable_prefix_caching,
        seed=options.seed,
        trust_remote_code=trust_remote_code,
    )
    for name in ("gpu_memory_utilization", "kv_cache_memory_bytes", "max_model_len", "max_num_seqs"):
        if getattr(options, name) is not None:
            kwargs[name] = getattr(options, name)
    if options.enforce_eager is not None:
        kwargs["enforce_eager"] = options.enforce_eager
    if quantization == "nf4":
        kwargs["quantization"] = "bitsandbytes"
    if adapter_path:
        if options.enable_lora is False:
            raise InputError(
                "an adapter is given but vllm.enable_lora is false: the adapter would be ignored",
                field="vllm.enable_lora",
            )
        rank = adapter_rank(adapter_path)
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=max(options.max_lora_rank or 0, rank))
    elif options.enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=options.max_lora_rank or 64)
    return kwargs


def model_config(model_path: str, trust_remote_code: bool = False) -> Any:
    """The model's ``transformers`` config, or exit 2 naming ``model.model_name_or_path``."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"cannot load the model for the vllm backend: {first}", path=model_path, field="model.model_name_or_path"
        ) from None


def context_of(config: PretrainedConfig) -> int | None:
    """The model's context length (``max_position_embeddings``), when its config says."""
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def kv_bytes_per_token(config: PretrainedConfig, dtype: str) -> int | None:
    """Bytes of KV cache per token (keys and values of every layer), or ``None`` for configs we cannot read."""
    text = getattr(config, "get_text_config", lambda: config)()
    layers = getattr(text, "num_hidden_layers", None)
    heads = getattr(text, "num_attention_heads", None)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or (text.hidden_size // heads if heads else None)
    if not (layers and kv_heads and head_dim):
        return None
    return 2 * int(layers) * int(kv_heads) * int(head_dim) * DTYPE_BYTES.get(dtype, 2)


def free_ram_bytes() -> int:
    """Available RAM (``MemAvailable``), or 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def check_engine_options(kwargs: dict[str, Any], config: PretrainedConfig, *, gpu: bool) -> dict[str, Any]:
    """``max_model_len`` within the model's context, the KV cache large enough for one sequence, a KV cache size and
    eager execution (unless ``vllm.enforce_eager`` says otherwise) on a CPU (see the module docstring); returns the
    (completed) ``kwargs``."""
    if not gpu:
        kwargs.setdefault("enforce_eager", True)
    context = context_of(config)
    length = kwargs.get("max_model_len") or context
    if context is not None and kwargs.get("max_model_len") and kwargs["max_model_len"] > context:
        raise InputError(
            f"max_model_len {kwargs['max_model_len']} is over the model's context of {context} tokens "
            "(max_position_embeddings); lower it or leave it unset",
            field="vllm.max_model_len",
        )
    per_token = kv_bytes_per_token(config, kwargs.get("dtype", "auto"))
    if per_token is None or length is None:
        return kwargs
    one_sequence = per_token * int(length)
    if not gpu and "kv_cache_memory_bytes" not in kwargs and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        wanted = max(CPU_KV_SEQUENCES * one_sequence, CPU_KV_MIN_BYTES)
        kwargs["kv_cache_memory_bytes"] = max(one_sequence, min(wanted, free_ram_bytes() // 4 or wanted))
    given = kwargs.get("kv_cache_memory_bytes")
    if given is not None and given < one_sequence:
        raise InputError(
            f"a KV cache of {given} bytes cannot hold one sequence of max_model_len {length} tokens "
            f"({one_sequence} bytes); raise vllm.kv_cache_memory_bytes or lower vllm.max_model_len",
            field="vllm.kv_cache_memory_bytes",
        )
    return kwargs


STARTUP_HINTS = (  # (words in vLLM's message, the option to change), first match wins
    (("lora",), "vllm.max_lora_rank"),
    (("max_model_len", "max model len", "max seq len"), "vllm.max_model_len"),
    (("kv cache", "kv_cache", "cache blocks", "memory"), "vllm.kv_cache_memory_bytes"),
    (("dtype", "bfloat16", "float16"), "vllm.dtype"),
)


def startup_error(err: BaseException) -> InputError:
    """An engine start-up failure as one line naming the option to change (exit 2)."""
    text = " ".join(str(err).split())
    lowered = text.lower()
    field = next((option for words, option in STARTUP_HINTS if any(w in lowered for w in words)), "vllm")
    hint = "" if field == "vllm" else f"; change --{field}"
    return InputError(f"the vLLM engine failed to start ({type(err).__name__}: {text[:400]}){hint}", field=field)
