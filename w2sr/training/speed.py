"""Speed options of the student's training step: ``model.compile``, ``model.liger_kernels``, ``model.fused_optimizer``.

- ``compile_decoder_layers``: ``torch.compile`` of each decoder layer in place (``nn.Module.compile``: parameter
  names, checkpoints, peft adapters and FSDP's per-layer wrapping stay as they are; the loss and the LM head are not
  compiled). Refused with one clear line where it cannot apply: a model without a list of decoder layers, DeepSpeed
  (its ZeRO-3 parameter hooks break the graphs), or a CPU without a C++ compiler for inductor.
- ``apply_liger_kernels``: Liger's Triton RMSNorm, SwiGLU MLP and RoPE kernels patched into the loaded model (the
  architectures Liger supports, CUDA only); its cross-entropy patches stay off, as ``model.loss`` owns the loss.
- ``fuse_adamw``: ``torch.optim.AdamW`` / ``Adam`` rebuilt with ``fused=True`` (one kernel for all tensors) when the
  user chose neither ``fused`` nor ``foreach`` and every parameter is on a device torch's fused kernel supports.

Exercised by ``pytest tests/training/test_speed_options.py`` and ``python benchmarks/gpu_throughput.py``.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
from typing import Any

import torch

from w2sr.records.jsonl import InputError

COMPILE_BACKEND = "inductor"  # tests switch this to "aot_eager" to check the wiring without a C++ build
FUSED_DEVICES = ("cuda", "cpu")


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def require_liger() -> None:
    """Before any heavy work: ``model.liger_kernels`` without liger-kernel is an input error (exit 2)."""
    if not liger_available():
        raise InputError(
            "model.liger_kernels needs liger-kernel (Triton, CUDA): pip install 'w2sr[gpu]', or set "
            "model.liger_kernels false",
            field="model.liger_kernels",
        )


def _causal_lm(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: Any) -> torch.nn.ModuleList | None:
    """The decoder's list of layers (``model.model.layers`` for Llama/Qwen/Mistral/Gemma), or None."""
    causal_lm = _causal_lm(model)
    decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
    for owner in (decoder, getattr(causal_lm, "model", None), causal_lm):
        layers = getattr(owner, "layers", None) if owner is not None else None
        if isinstance(layers, torch.nn.ModuleList) and len(layers):
            return layers
    return None


def check_compile(strategy_name: str, device: torch.device | str) -> None:
    """Refuse ``model.compile`` where it cannot apply, with one line that says why (an ``InputError``)."""
    if "DeepSpeed" in strategy_name:
        raise InputError(
            "model.compile does not work under DeepSpeed (ZeRO-3 gathers parameters in hooks that "
            "break the compiled graphs): use FSDP, or set model.compile false",
            field="model.compile",
        )
    if torch.device(device).type == "cpu" and COMPILE_BACKEND == "inductor":
        cxx = os.environ.get("CXX", "g++")
        if not any(shutil.which(c) for c in (cxx, "g++", "clang++", "c++")):
            raise InputError(
                "model.compile on the CPU needs a C++ compiler for torch inductor (g++ or clang++); "
                "install one or set model.compile false",
                field="model.compile",
            )


def compile_decoder_layers(model: Any, backend: str | None = None) -> int:
    """Compile every decoder layer in place; returns how many. An ``InputError`` when there is no layer list."""
    layers = decoder_layers(model)
    if layers is None:
        raise InputError(
            f"model.compile: cannot find the decoder layers of {type(_causal_lm(model)).__name__} "
            "(expected model.model.layers); set model.compile false",
            field="model.compile",
        )
    for layer in layers:
        layer.compile(backend=backend or COMPILE_BACKEND, dynamic=False)
    return len(layers)


def apply_liger_kernels(model: Any, device: torch.device | str) -> str:
    """Patch Liger's RMSNorm / SwiGLU / RoPE kernels into ``model`` (a peft model: its base); returns the model type."""
    require_liger()
    if torch.device(device).type != "cuda":
        raise InputError(
            "model.liger_kernels runs on CUDA only (Triton kernels); set it false on this device",
            field="model.liger_kernels",
        )
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    causal_lm = _causal_lm(model)
    model_type = getattr(causal_lm.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise InputError(
            f"model.liger_kernels: Liger has no kernels for model type {model_type!r} (it supports "
            f"{', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}); set it false",
            field="model.liger_kernels",
        )
    _apply_liger_kernel_to_instance(
        model=causal_lm, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )
    return str(model_type)


def fuse_adamw(optimizer: torch.optim.Optimizer) -> tuple[torch.optim.Optimizer, str]:
    """``(optimizer, what was done)``: a fused rebuild of a plain ``AdamW``/``Adam`` whose user chose neither
    ``fused`` nor ``foreach``; anything else is returned as it is, with the reason."""
    if type(optimizer) not in (torch.optim.AdamW, torch.optim.Adam):
        return optimizer, f"kept {type(optimizer).__name__} (fused applies to torch.optim.AdamW / Adam)"
    defaults = dict(optimizer.defaults)
    if defaults.get("fused") is not None or defaults.get("foreach") is not None:
        return optimizer, "kept the optimizer's own fused/foreach choice"
    params = [p for group in optimizer.param_groups for p in group["params"]]
    devices = {p.device.type for p in params}
    if not devices <= set(FUSED_DEVICES) or any(not p.is_floating_point() for p in params):
        return optimizer, f"kept the for-each optimizer (parameters on {sorted(devices)})"
    accepted = inspect.signature(type(optimizer).__init__).parameters
    kwargs = {k: v for k, v in defaults.items() if k in accepted and k not in ("fused", "foreach")}
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in optimizer.param_groups]
    return type(optimizer)(groups, fused=True, **kwargs), f"fused {type(optimizer).__name__} on {sorted(devices)[0]}"
