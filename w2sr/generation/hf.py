"""Hugging Face generation backend: batched, left-padded ``model.generate`` that stops on every end-of-turn token.

Used by ``w2sr generate`` / ``w2sr evaluate`` (``backend: hf``) and by the reasoning-accuracy callback during
``w2sr fit``. Stops on the EOS token *and* the chat template's end-of-turn token (Qwen2.5 base configs name
``<|endoftext|>`` as EOS while turns end with ``<|im_end|>``). Exercised by ``pytest tests/test_generation.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from rich.progress import Progress

from w2sr.generation.base import Completion, GenerationRequest, SamplingOptions
from w2sr.prompts import end_of_turn_tokens


def stop_token_ids(tokenizer: Any, model: Any | None = None) -> list[int]:
    """Every token id that ends a completion: the generation config's EOS ids, the tokenizer's EOS and end-of-turn."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in ([configured] if isinstance(configured, int) else list(configured or [])):
        ids.append(int(value))
    vocab = tokenizer.get_vocab()
    ids.extend(int(vocab[token]) for token in end_of_turn_tokens(tokenizer) if token in vocab)
    return sorted(set(ids))


def generation_config(sampling: SamplingOptions, stops: list[int], pad_id: int) -> Any:
    """A generation config with only w2sr's settings (top-k off, as in vLLM)."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n,
                              eos_token_id=stops, pad_token_id=pad_id, use_cache=True,
                              do_sample=sampling.temperature > 0)
    if sampling.temperature > 0:
        config.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    return config


@contextmanager
def only_these_settings(model: Any) -> Iterator[None]:
    """transformers fills every setting a passed config leaves unset from ``model.generation_config`` (e.g. Qwen's
    repetition_penalty 1.05, top_k 20). Swap in a blank one for the call so the model's defaults never leak into
    greedy or paper-setting runs."""
    from transformers import GenerationConfig

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


@torch.no_grad()
def generate_completions(model: Any, tokenizer: Any, prompts: list[str], sampling: SamplingOptions,
                         progress: bool = False, description: str = "generating") -> list[list[Completion]]:
    """``sampling.n`` completions for each prompt text, in prompt order.

    Prompts are sorted by length so batches waste little padding. Sampling is seeded per batch from
    ``sampling.seed`` (results are repeatable for a fixed batch size) inside a forked RNG, and the model is put in
    eval mode and its mode restored afterwards, so this is safe to call in the middle of training.
    """
    stops = stop_token_ids(tokenizer, model)
    if not stops:
        raise ValueError("no stop token: the tokenizer has no EOS or end-of-turn token")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[Completion]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    config = generation_config(sampling, stops, pad_id)
    fork_devices = [device] if device.type == "cuda" else []
    try:  # fork the RNG: seeding generation must not reset the training run's random stream
        with torch.random.fork_rng(devices=fork_devices), only_these_settings(model), \
                Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(description, total=len(prompts))
            for start in range(0, len(order), sampling.batch_size):
                batch = order[start:start + sampling.batch_size]
                enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
                torch.manual_seed(sampling.seed + start)
                out = model.generate(**enc, generation_config=config)
                new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()
                for row, ids in enumerate(new_tokens):
                    cut = next((pos for pos, tok in enumerate(ids) if tok in stops), None)
                    kept = ids if cut is None else ids[:cut]
                    completion = Completion(text=tokenizer.decode(kept, skip_special_tokens=True),
                                            finish_reason="length" if cut is None else "stop",
                                            tokens=len(kept) + (0 if cut is None else 1))
                    results[batch[row // sampling.n]].append(completion)
                bar.advance(task, len(batch))
    finally:
        tokenizer.padding_side = old_side
        if was_training:
            model.train()
    return results


class HFBackend:
    """Generation with an already-loaded Hugging Face (or peft) causal LM and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, name: str, progress: bool = True) -> None:
        self.model, self.tokenizer, self.name, self.progress = model, tokenizer, name, progress

    def generate(self, requests: list[GenerationRequest], sampling: SamplingOptions) -> list[list[Completion]]:
        return generate_completions(self.model, self.tokenizer, [r.text for r in requests], sampling,
                                    progress=self.progress, description=f"generating with {self.name}")
