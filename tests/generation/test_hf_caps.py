"""Per-prompt new-token caps in the HF backend (issue 17, item 7): near the context limit every prompt gets its own
cap (``context - prompt``); a completion is cut at *its* cap, never at another prompt's in the same batch."""

from __future__ import annotations

import pytest
import torch

from w2sr.generation.base import GenerationRequest, SamplingOptions
from w2sr.generation.hf import caps_can_mix, iter_completions, plan_batches
from w2sr.generation.run import GenerationStats, apply_guards
from w2sr.records.problems import Problem
from w2sr.training.module import StudentModule


def _never_stop(model, tokenizer) -> None:
    """Greedy decoding writes "7" forever: every completion runs to its cap."""
    bias = torch.full((model.config.vocab_size,), -1e4)
    bias[tokenizer.convert_tokens_to_ids("7")] = 1e4
    model.lm_head.bias = torch.nn.Parameter(bias)


def _requests(tokenizer, context: int, sampling: SamplingOptions) -> list[GenerationRequest]:
    texts = ["1 + 2 = ?" * k for k in (6, 5, 4, 2, 1)]  # different lengths, all near the context limit
    requests = [
        GenerationRequest(problem=Problem(id=str(i), problem=t, answer=None), messages=[], text=t)
        for i, t in enumerate(texts)
    ]
    return apply_guards(requests, tokenizer, sampling, context, GenerationStats())


def _check(model, tokenizer, context: int, sampling: SamplingOptions) -> list[int]:
    requests = _requests(tokenizer, context, sampling)
    caps = [r.new_tokens(sampling) for r in requests]
    assert len(set(caps)) > 2  # the prompts really get different caps
    got = dict(iter_completions(model, tokenizer, requests, sampling))
    for index, request in enumerate(requests):
        for completion in got[index]:
            assert completion.finish_reason == "length"
            assert completion.tokens == caps[index] == min(sampling.max_new_tokens, context - len(request.prompt_ids))
    return caps


@pytest.mark.parametrize("n,temperature", [(1, 0.0), (2, 1.0)])
def test_each_prompt_is_cut_at_its_own_cap_in_one_batch(tiny_model, n, temperature):
    model, tokenizer = StudentModule(tiny_model).load_for_inference("cpu")
    _never_stop(model, tokenizer)
    assert caps_can_mix(model.config)  # rotary positions: one batch holds every cap
    longest = len(tokenizer("1 + 2 = ?" * 6, add_special_tokens=False)["input_ids"])
    sampling = SamplingOptions(n=n, temperature=temperature, max_new_tokens=40, batch_size=8, seed=0)
    _check(model, tokenizer, longest + 3, sampling)


def test_learned_positions_get_batches_with_one_cap_and_never_index_past_the_context(tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    longest = len(tiny_tokenizer("1 + 2 = ?" * 6, add_special_tokens=False)["input_ids"])
    context = longest + 3
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tiny_tokenizer),
            n_positions=context,
            n_embd=32,
            n_layer=1,
            n_head=2,
            eos_token_id=tiny_tokenizer.eos_token_id,
        )
    ).eval()
    _never_stop(model, tiny_tokenizer)
    assert not caps_can_mix(model.config)
    _check(model, tiny_tokenizer, context, SamplingOptions(max_new_tokens=40, batch_size=8))


def test_plan_batches():
    caps = [3, 3, 5, 9, 9, 9]
    assert plan_batches(list(range(6)), caps, 2, mix=True) == [[0, 1], [2, 3], [4, 5]]
    assert plan_batches(list(range(6)), caps, 2, mix=False) == [[0, 1], [2], [3, 4], [5]]
