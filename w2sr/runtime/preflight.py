"""Checks every ``w2sr`` command makes before any heavy work: model locations, checkpoints, sizes, devices.

Each check raises :class:`w2sr.records.jsonl.InputError` naming the option, so the CLI exits with code 2 and one line
instead of a traceback from transformers, datasets or Lightning minutes into a run. ``W2SRCLI`` calls
:func:`check_command` in its ``before_<subcommand>`` hooks. :func:`packed_layout` says how ``data.packing`` rows
must reach each attention implementation (and refuses one that would attend across packed examples). Exercised by
``pytest tests/runtime/test_faults.py tests/training/test_packing_attention.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from w2sr.records.jsonl import InputError

# huggingface_hub's rule for repo ids (validate_repo_id): [owner/]name of letters, digits, -, _, ., at most 96 chars
_HUB_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,96}(/[A-Za-z0-9_.\-]{1,96})?$")
_CKPT_KEYWORDS = {"last", "best", "hpc", "registry"}


def _offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _in_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a model, adapter or tokenizer snapshot of ``repo_id``."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return True
    return any(
        isinstance(try_to_load_from_cache(repo_id, name), str)
        for name in ("config.json", "adapter_config.json", "tokenizer_config.json")
    )


def check_model_location(value: str | None, option: str) -> None:
    """A model/tokenizer/adapter option must name an existing folder or a reachable hub id ``owner/name``."""
    if not value:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise InputError(f"{value} is a file; give the model folder (with config.json) or a hub id", field=option)
    looks_local = value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1
    if looks_local or not _HUB_ID.match(value) or "--" in value or ".." in value:
        raise InputError(
            f"no such folder, and {value!r} is not a Hugging Face hub id (owner/name) either", field=option
        )
    if _in_cache(value):
        return
    if _offline():
        raise InputError(
            f"{value!r} is not a local folder and not in the Hugging Face cache, and the hub is off "
            "(HF_HUB_OFFLINE); download it first or give a local folder",
            field=option,
        )
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import RepositoryNotFoundError

        HfApi().model_info(value, timeout=15)
    except RepositoryNotFoundError:
        raise InputError(
            f"no model {value!r} on the Hugging Face hub (private or gated? log in with `hf auth login`)", field=option
        ) from None
    except Exception as err:  # noqa: BLE001 - no network, proxy, DNS...
        raise InputError(
            f"{value!r} is not a local folder and the Hugging Face hub cannot be reached "
            f"({type(err).__name__}); give a local folder or check the network",
            field=option,
        ) from None


# attention implementations that keep packed examples apart in rows of restarting position ids (transformers builds
# the document mask from them for any number of rows; sdpa_varlen attends per segment); None = transformers' default
ROW_PACKING_ATTENTION = (None, "sdpa", "eager", "flex_attention", "sdpa_varlen")


def is_flash_attention(attn: str | None) -> bool:
    """flash_attention_2 / _3 and the hub kernels of flash-attention (``kernels-community/flash-attn...``)."""
    return bool(attn) and "flash" in str(attn).lower() and not str(attn).startswith("paged")


def packed_layout(attn: str | None) -> str:
    """How ``data.packing`` rows are laid out for an attention implementation: ``rows`` (restarting position ids, any
    number of rows) or ``flat`` (flash-attention: the micro-batch flattened into one row with ``cu_seq_lens``, since
    it reads position ids as boundaries only in a batch of one row). Refuses (exit 2) one that could attend across
    the packed examples."""
    if attn in ROW_PACKING_ATTENTION:
        return "rows"
    if is_flash_attention(attn):
        return "flat"
    raise InputError(
        f"model.attn_implementation {attn} cannot keep packed examples apart (only sdpa, eager, "
        "flex_attention, sdpa_varlen and flash-attention can); choose one of them or data.packing false",
        field="model.attn_implementation",
    )


def check_attention(attn: str | None, packing: bool, training: bool) -> None:
    """Exit 2 before any weight is loaded for an attention implementation that cannot run here or with packing."""
    if packing:
        packed_layout(attn)
    if not (is_flash_attention(attn) or (attn == "flex_attention" and training)):
        return
    import torch

    if torch.cuda.is_available():
        return
    if attn == "flex_attention":
        raise InputError(
            "model.attn_implementation flex_attention cannot train on the CPU (torch's FlexAttention "
            "has no backward there); use sdpa_varlen (with data.packing) or sdpa",
            field="model.attn_implementation",
        )
    raise InputError(
        f"model.attn_implementation {attn} needs a CUDA GPU (flash-attention kernels); no GPU is "
        "visible here: use sdpa, or sdpa_varlen with data.packing",
        field="model.attn_implementation",
    )


def check_ckpt_path(value: str | None) -> None:
    if value and value not in _CKPT_KEYWORDS and "://" not in value and not Path(value).exists():
        raise InputError(f"checkpoint not found: {value}", field="ckpt_path")


def check_command(subcommand: str, config: Any, model: Any = None, datamodule: Any = None) -> None:
    """All checks for one subcommand, given its parsed config namespace and the instantiated model / datamodule."""

    def get(name: str) -> Any:
        try:
            return config[name]
        except (KeyError, TypeError):
            return getattr(config, name, None)

    check_ckpt_path(get("ckpt_path"))
    limit = get("limit")
    if limit is not None and limit < 1:
        raise InputError(f"must be at least 1, got {limit}", field="limit")
    if datamodule is not None and hasattr(datamodule, "hparams"):
        for name in ("batch_size", "max_seq_length"):
            value = datamodule.hparams.get(name)
            if value is not None and value < 1:
                raise InputError(f"must be at least 1, got {value}", field=f"data.{name}")
    if model is not None and hasattr(model, "hparams"):
        hp = model.hparams
        packing = bool(datamodule is not None and getattr(datamodule, "hparams", {}).get("packing"))
        if subcommand in ("fit", "validate", "test", "predict") or get("backend") in (None, "hf"):
            if subcommand != "verify":
                check_attention(hp.get("attn_implementation"), packing, training=subcommand == "fit")
        if subcommand != "verify":
            for name in ("model_name_or_path", "tokenizer_name_or_path", "adapter_path"):
                check_model_location(hp.get(name), f"model.{name}")
        if subcommand != "verify" and hp.get("quantization") == "nf4" and get("backend") != "toy":
            import torch

            if not torch.cuda.is_available():
                source = str(getattr(model, "quantization_source", ""))  # StudentModule: the student card's, or given
                origin = f" (from {source}: the adapter was trained on an NF4 base)" if source.endswith(".json") else ""
                raise InputError(
                    f"nf4 (4-bit QLoRA) needs a CUDA GPU and bitsandbytes{origin}; no GPU is visible "
                    "here: use --model.quantization none for a bf16 base",
                    field="model.quantization",
                )
