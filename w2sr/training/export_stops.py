"""The exported student's ``generation_config.json``: its ``eos_token_id`` lists the token that ends a turn.

A Qwen2.5 *base* model names only ``<|endoftext|>`` as EOS, while the chat template w2sr trains with closes every
assistant turn with ``<|im_end|>`` (the student learns to write it: FIELD_NOTES, "Models and tokenizers"). w2sr's own
engines stop on both (``w2sr.generation.hf.stop_token_ids``), but an export that kept its base's generation config
would write past its answer in plain transformers ``generate``, in vLLM with default sampling parameters and in
``vllm serve`` (open-r1 #603, LLaMA-Factory #7454). Every export (``fit``'s full model or adapter, ``w2sr export
--adapter`` merges, ``w2sr export --checkpoint`` consolidations, FSDP and ZeRO-3 exports) therefore writes a generation
config whose EOS ids are the base's followed by the turn-closing token(s) the chat template renders after a completion.
Exercised by ``pytest tests/training/test_export_stops.py`` and, on the real engine,
``pytest tests/generation/test_vllm_export_stops.py`` (``make test-vllm``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from w2sr.records.prompts import end_of_turn_tokens, render_conversation

if TYPE_CHECKING:
    from transformers import GenerationConfig, PretrainedConfig

_PROBE_COMPLETION = "w2sr"


def turn_end_tokens(tokenizer: Any) -> list[str]:
    """The tokens that close an assistant turn as w2sr trains it: the end-of-turn tokens the chat template renders
    after a completion (``<|im_end|>`` for ChatML), else the EOS token w2sr appends (no template, or one that does
    not close the turn). A template that cannot be rendered gives every known end-of-turn token of the vocabulary."""
    candidates = end_of_turn_tokens(tokenizer)
    use_template = bool(getattr(tokenizer, "chat_template", None))
    try:
        _, response = render_conversation(
            tokenizer, [{"role": "user", "content": "1"}], _PROBE_COMPLETION, use_chat_template=use_template
        )
    except Exception:  # noqa: BLE001 (a model's own Jinja template may raise anything): fall back to the vocabulary
        return candidates
    tail = response[response.find(_PROBE_COMPLETION) + len(_PROBE_COMPLETION) :]
    found = sorted((tail.find(token), token) for token in candidates if token and token in tail)
    return [token for _, token in found]


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def stopping_generation_config(
    generation_config: GenerationConfig | None, model_config: PretrainedConfig | None, tokenizer: Any
) -> GenerationConfig:
    """A copy of the model's generation config (or one built from its ``config.json``) whose ``eos_token_id`` is the
    base's EOS ids followed by the turn-closing token ids (each once, base order kept)."""
    import copy

    from transformers import GenerationConfig

    if generation_config is not None:
        config = copy.deepcopy(generation_config)
    elif model_config is not None:
        config = GenerationConfig.from_model_config(model_config)
    else:
        config = GenerationConfig()
    vocab = tokenizer.get_vocab()
    eos = _ids(config.eos_token_id) or _ids(getattr(model_config, "eos_token_id", None))
    if not eos and getattr(tokenizer, "eos_token_id", None) is not None:
        eos = [int(tokenizer.eos_token_id)]
    for token in turn_end_tokens(tokenizer):
        if token in vocab and int(vocab[token]) not in eos:
            eos.append(int(vocab[token]))
    config.eos_token_id = eos[0] if len(eos) == 1 else eos
    return config


def write_generation_config(
    folder: str | Path,
    generation_config: GenerationConfig | None,
    model_config: PretrainedConfig | None,
    tokenizer: Any,
) -> Path:
    """Write ``generation_config.json`` into an export folder (replacing what ``save_pretrained`` wrote)."""
    config = stopping_generation_config(generation_config, model_config, tokenizer)
    config.save_pretrained(str(folder))
    return Path(folder) / "generation_config.json"


def base_generation_config(base: str) -> GenerationConfig | None:
    """The base model's own ``generation_config.json``, or ``None`` when it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(base)
    except (OSError, ValueError):
        return None
