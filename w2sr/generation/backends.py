"""Backends: a generation backend by name (``--backend hf|vllm|toy``), one registry line per backend.

``model`` is the ``model:`` group's module (a :class:`w2sr.training.module.StudentModule`): it names the weights
and loads them; nothing here imports training code. Exercised by ``w2sr generate --backend toy`` and
``pytest tests/generation``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from w2sr.generation.base import GenerationBackend
from w2sr.generation.vllm import VLLMOptions
from w2sr.records.jsonl import InputError

if TYPE_CHECKING:
    import torch
    from lightning.pytorch import LightningModule
    from transformers import PreTrainedTokenizerBase

Backend = Literal["hf", "vllm", "toy"]


def make_backend(
    model: LightningModule, kind: str, device: torch.device | str, vllm: VLLMOptions | None = None
) -> tuple[GenerationBackend, PreTrainedTokenizerBase]:
    """``(backend, tokenizer)`` for a generation backend name."""
    if kind == "vllm":
        from w2sr.generation.vllm import VLLMBackend, model_config

        model_config(model._require_model_path(), model.hparams.trust_remote_code)  # a missing model: exit 2 first
        tokenizer = model.load_tokenizer()
        return VLLMBackend.from_module(model, tokenizer, vllm or VLLMOptions()), tokenizer
    if kind == "hf":
        from w2sr.generation.hf import HFBackend

        hf_model, tokenizer = model.load_for_inference(device)
        return HFBackend(hf_model, tokenizer, name=model.label), tokenizer
    if kind == "toy":
        from w2sr.generation.toy import ToyTeacherBackend

        tokenizer = model.load_tokenizer()
        return ToyTeacherBackend(tokenizer), tokenizer
    raise InputError(f"unknown backend {kind!r}; choose one of hf, vllm, toy", field="backend")
