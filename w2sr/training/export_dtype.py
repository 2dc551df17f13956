"""Export dtype: which dtype ``w2sr export`` merges an adapter in, so the merged model answers as the base + adapter
that was trained and evaluated (a float32 student merged in bfloat16 changed 2 of 4 greedy answers in issue 28).

``fit`` records the dtype its student computed in (:func:`weight_dtype`) in the student card ``w2sr_student.json``
(key ``dtype``); ``w2sr export --adapter DIR`` merges in that dtype (:func:`trained_dtype`) unless ``--dtype`` says
otherwise. Exercised by ``pytest tests/training/test_export.py -k dtype``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from w2sr.records.jsonl import InputError
from w2sr.training.shards import CARD

EXPORT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def weight_dtype(model: Any) -> str | None:
    """The dtype a student computes in, for its card: that of the frozen base weights (LoRA), else of the weights;
    a 4-bit base counts as its compute dtype (``bnb_4bit_compute_dtype``)."""
    quantization = getattr(getattr(model, "config", None), "quantization_config", None)
    compute = getattr(quantization, "bnb_4bit_compute_dtype", None) if quantization is not None else None
    if compute is None and isinstance(quantization, dict):
        compute = quantization.get("bnb_4bit_compute_dtype")
    floats = [p for p in model.parameters() if p.is_floating_point()]
    frozen = [p for p in floats if not p.requires_grad]
    dtype = compute or next((p.dtype for p in frozen or floats), None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else None
    return name if name in EXPORT_DTYPES else None


def trained_dtype(adapter_dir: Path, base: str, trust_remote_code: bool = False) -> tuple[str, str]:
    """``(dtype, where it came from)`` of the weights an adapter was trained and evaluated with: the student card's
    ``dtype`` (written by ``fit`` since issue 28), else the base model's config (``dtype`` / ``torch_dtype``: what
    transformers loads it in), else float32 (transformers' default)."""
    card_file = adapter_dir / CARD
    if card_file.is_file():
        try:
            value = json.loads(card_file.read_text(encoding="utf-8")).get("dtype")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as err:
            raise InputError(f"malformed student card ({err})", path=card_file) from None
        if value is not None:
            if value not in EXPORT_DTYPES:
                raise InputError(
                    f"unknown dtype {value!r} (expected one of {sorted(EXPORT_DTYPES)}); pass --dtype",
                    path=card_file,
                    field="dtype",
                )
            return value, str(card_file)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(value).removeprefix("torch.") if value is not None else None
    if name in EXPORT_DTYPES:
        return name, f"{base} (config.json)"
    return "float32", "default"
