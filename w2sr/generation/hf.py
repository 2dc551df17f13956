"""Hugging Face generation backend: batched, left-padded ``model.generate`` that stops on every end-of-turn token.

Used by ``w2sr generate`` / ``w2sr evaluate`` (``backend: hf``) and by the reasoning-accuracy callback during
``w2sr fit``. Stops on the EOS token, the chat template's end-of-turn token (Qwen2.5 base configs name
``<|endoftext|>`` as EOS while turns end with ``<|im_end|>``) *and* the start of a new turn (``<|im_start|>``), so a
model that forgets to end its turn never writes fake user/assistant turns that the last-box rule would then grade.

Seeds: HF ``generate`` samples a whole batch from one torch generator, so per-sample seeds are not possible here.
Each batch is seeded from the per-sample seed (:func:`w2sr.generation.base.sample_seed`) of its first request:
sampled completions are repeatable for the same problems, order and ``batch_size``, but change when the batch
composition changes (another ``batch_size``, ``--limit``, shard or a resumed run). Greedy decoding does not depend
on seeds (only, in low precision, on padding noise). Use the vLLM backend for batch-independent sampled runs.
Exercised by ``pytest tests/generation/test_generation.py tests/generation/test_hf_caps.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from rich.progress import Progress

from w2sr.generation.base import Completion, GenerationRequest, SamplingOptions, sample_seed
from w2sr.records.prompts import end_of_turn_tokens

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

# Tokens that open a new chat turn (ChatML, Llama 3, Gemma): a completion that reaches one has left its own turn.
NEW_TURN_TOKENS = ("<|im_start|>", "<|start_header_id|>", "<start_of_turn>")


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> list[int]:
    """Every token id that ends a completion: the generation config's EOS ids, the tokenizer's EOS, end-of-turn and
    start-of-new-turn tokens."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in [configured] if isinstance(configured, int) else list(configured or []):
        ids.append(int(value))
    vocab = tokenizer.get_vocab()
    ids.extend(int(vocab[token]) for token in end_of_turn_tokens(tokenizer) if token in vocab)
    ids.extend(int(vocab[token]) for token in NEW_TURN_TOKENS if token in vocab)
    return sorted(set(ids))


def context_length(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> int | None:
    """The model's context in tokens: ``max_position_embeddings`` (or ``n_positions`` / ``max_sequence_length``) of
    its config, else the tokenizer's ``model_max_length`` when it is a real limit; ``None`` when neither says."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**8:  # transformers uses int(1e30) for "no limit"
        return limit
    return None


def generation_config(
    sampling: SamplingOptions, stops: list[int], pad_id: int, max_new_tokens: int | None = None, n: int | None = None
) -> Any:
    """A generation config with only w2sr's settings (top-k off, as in vLLM)."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens or sampling.max_new_tokens,
        num_return_sequences=n or sampling.n,
        eos_token_id=stops,
        pad_token_id=pad_id,
        use_cache=True,
        do_sample=sampling.temperature > 0,
    )
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


# rotary position types whose frequencies do not depend on the sequence length (transformers' rope_type names)
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def caps_can_mix(config: PretrainedConfig) -> bool:
    """Whether prompts with different new-token caps may share a batch. A row that reaches its cap is stopped (its
    later tokens are dropped) but still advances with the batch up to the largest cap: harmless with rotary positions
    of fixed frequencies, not with a learned position table (it would index past the context) or rotary scaling that
    depends on the longest row (``dynamic``, ``longrope``: it would change the other rows)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not isinstance(params, dict):
        return False
    kinds = [v.get("rope_type", "default") for v in params.values() if isinstance(v, dict)] or [
        params.get("rope_type", params.get("type", "default"))
    ]
    return all(kind in STATIC_ROPE for kind in kinds)


def plan_batches(order: list[int], caps: list[int], batch_size: int, mix: bool) -> list[list[int]]:
    """Batches of request indices (in ``order``): ``batch_size`` each, and, unless ``mix``, a new batch wherever the
    cap changes, so one cap fits the whole batch."""
    batches: list[list[int]] = []
    for index in order:
        if not batches or len(batches[-1]) >= batch_size or (not mix and caps[batches[-1][0]] != caps[index]):
            batches.append([])
        batches[-1].append(index)
    return batches


class RowCaps:
    """A stopping criterion: each output row (request x sample) stops at its own request's new-token cap."""

    def __init__(self, prompt_width: int, caps: list[int]) -> None:
        self.prompt_width, self.caps = prompt_width, torch.tensor(caps)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return self.caps.to(input_ids.device) <= input_ids.shape[1] - self.prompt_width


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int], stops: list[int], cap: int) -> Completion:
    ids = ids[:cap]
    cut = next((pos for pos, tok in enumerate(ids) if tok in stops), None)
    kept = ids if cut is None else ids[:cut]
    return Completion(
        text=tokenizer.decode(kept, skip_special_tokens=True),
        finish_reason="length" if cut is None else "stop",
        tokens=len(kept) + (0 if cut is None else 1),
    )


@torch.no_grad()
def iter_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: list[GenerationRequest],
    sampling: SamplingOptions,
) -> Iterator[tuple[int, list[Completion]]]:
    """Yield ``(request_index, completions)`` batch by batch (one completion per requested sample).

    Requests are sorted longest first so batches waste little padding (and an out-of-memory error shows at once).
    A batch generates ``n`` samples per request, each request up to its own new-token cap (a stopping criterion per
    row; requests near the context limit have smaller caps); for models where a stopped row must not run on to a
    larger cap (:func:`caps_can_mix`), batches are cut so that one cap fits all. Each batch seeds torch from its
    first request's sample seed inside a forked RNG. The model is put in eval mode and its mode restored afterwards,
    so this is safe in the middle of training.
    """
    from transformers import StoppingCriteriaList

    stops = stop_token_ids(tokenizer, model)
    if not stops:
        raise ValueError("no stop token: the tokenizer has no EOS or end-of-turn token")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    lengths = [len(r.prompt_ids) if r.prompt_ids is not None else len(r.text) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: -lengths[i])
    # greedy samples are all the same completion: generate one and repeat it
    n = 1 if sampling.temperature == 0 else max([sampling.n, *(max(r.samples) + 1 for r in requests if r.samples)])
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    fork_devices = [device] if device.type == "cuda" else []
    try:  # fork the RNG: seeding generation must not reset the training run's random stream
        with torch.random.fork_rng(devices=fork_devices), only_these_settings(model):
            all_caps = [r.new_tokens(sampling) for r in requests]
            mix = caps_can_mix(getattr(model, "config", None))
            for batch in plan_batches(order, all_caps, sampling.batch_size, mix):
                caps = [all_caps[i] for i in batch]
                config = generation_config(sampling, stops, pad_id, max_new_tokens=max(caps), n=n)
                if all(requests[i].prompt_ids is not None for i in batch):
                    enc = tokenizer.pad(
                        {"input_ids": [requests[i].prompt_ids for i in batch]}, return_tensors="pt", padding=True
                    ).to(device)
                else:
                    enc = tokenizer(
                        [requests[i].text for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
                    ).to(device)
                first = requests[batch[0]]
                torch.manual_seed(
                    sample_seed(sampling.seed, first.problem.id, 0) if first.seeds is None else first.seeds[0]
                )
                width = enc["input_ids"].shape[1]
                out = model.generate(
                    **enc,
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([RowCaps(width, [cap for cap in caps for _ in range(n)])]),
                )
                new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
                for row, index in enumerate(batch):
                    wanted = requests[index].sample_indices(sampling)
                    rows = new_tokens[row * n : (row + 1) * n]
                    yield index, [_decode(tokenizer, rows[s if n > 1 else 0], stops, caps[row]) for s in wanted]
    finally:
        tokenizer.padding_side = old_side
        if was_training:
            model.train()


def generate_completions(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    sampling: SamplingOptions,
    progress: bool = False,
    description: str = "generating",
) -> list[list[Completion]]:
    """``sampling.n`` completions for each prompt text, in prompt order (see :func:`iter_completions`)."""
    from w2sr.records.problems import Problem

    requests = [
        GenerationRequest(problem=Problem(id=str(i), problem=text, answer=None), messages=[], text=text)
        for i, text in enumerate(prompts)
    ]
    results: list[list[Completion]] = [[] for _ in prompts]
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=len(prompts))
        for index, completions in iter_completions(model, tokenizer, requests, sampling):
            results[index] = completions
            bar.advance(task)
    return results


class HFBackend:
    """Generation with an already-loaded Hugging Face (or peft) causal LM and its tokenizer."""

    kind = "hf"

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, progress: bool = True
    ) -> None:
        self.model, self.tokenizer, self.name, self.progress = model, tokenizer, name, progress
        self.context_length = context_length(getattr(model, "config", None), tokenizer)

    def stream(
        self, requests: list[GenerationRequest], sampling: SamplingOptions
    ) -> Iterator[tuple[int, list[Completion]]]:
        return iter_completions(self.model, self.tokenizer, requests, sampling)

    def generate(self, requests: list[GenerationRequest], sampling: SamplingOptions) -> list[list[Completion]]:
        results: list[list[Completion]] = [[] for _ in requests]
        for index, completions in self.stream(requests, sampling):
            results[index] = completions
        return results
