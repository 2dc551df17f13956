"""Context and turn guards: new tokens capped at the context minus the prompt, prompts that fill the context skipped
and counted (never a crash), and a stop on the start of a new turn (``<|im_start|>``)."""

from __future__ import annotations

import types

from conftest import seven_then

from w2sr.generation.base import SamplingOptions, sample_seed
from w2sr.generation.card import GenerationStats
from w2sr.generation.hf import HFBackend, context_length, stop_token_ids
from w2sr.generation.run import apply_guards, build_requests, generate_traces
from w2sr.records.problems import Problem
from w2sr.records.prompts import PromptOptions
from w2sr.training.module import StudentModule


def _problems(*texts: str) -> list[Problem]:
    return [Problem(id=f"p{i}", problem=t, answer="1") for i, t in enumerate(texts)]


def test_context_length_from_config_or_tokenizer():
    assert context_length(types.SimpleNamespace(max_position_embeddings=4096)) == 4096
    assert context_length(types.SimpleNamespace(n_positions=1024)) == 1024
    assert context_length(None, types.SimpleNamespace(model_max_length=2048)) == 2048
    assert context_length(None, types.SimpleNamespace(model_max_length=int(1e30))) is None


def test_guards_cap_and_skip(tiny_tokenizer):
    problems = _problems("1 + 1", "2 + 2 " * 5, "3 + 3 " * 40)
    requests = build_requests(problems, tiny_tokenizer, PromptOptions())
    lengths = [len(tiny_tokenizer(r.text, add_special_tokens=False)["input_ids"]) for r in requests]
    context = lengths[1] + 10  # room for 10 new tokens after the middle prompt, none after the long one
    stats = GenerationStats()
    kept = apply_guards(requests, tiny_tokenizer, SamplingOptions(max_new_tokens=20), context, stats)
    assert [r.problem.id for r in kept] == ["p0", "p1"]
    assert context - lengths[0] > 20  # the short prompt has room: not capped
    sampling = SamplingOptions(max_new_tokens=20)
    assert kept[0].max_new_tokens is None and kept[0].new_tokens(sampling) == 20 and kept[1].new_tokens(sampling) == 10
    assert (stats.capped_prompts, stats.skipped_prompts, stats.skipped_ids) == (1, 1, ["p2"])
    assert kept[0].prompt_ids == tiny_tokenizer(requests[0].text, add_special_tokens=False)["input_ids"]


def test_hf_run_with_a_small_context_caps_and_skips_without_crashing(tiny_model):
    module = StudentModule(tiny_model)
    model, tokenizer = module.load_for_inference("cpu")
    backend = HFBackend(model, tokenizer, name="tiny", progress=False)
    problems = _problems("1 + 1", "2 + 2 " * 60)
    short = len(
        tokenizer(build_requests(problems[:1], tokenizer, PromptOptions())[0].text, add_special_tokens=False)[
            "input_ids"
        ]
    )
    backend.context_length = short + 3
    stats = GenerationStats()
    traces = generate_traces(
        backend, problems, tokenizer, PromptOptions(), SamplingOptions(max_new_tokens=16), stats=stats
    )
    assert [t.problem.id for t in traces] == ["p0"]
    assert traces[0].completion_tokens <= 3 and (traces[0].finish_reason == "stop" or traces[0].completion_tokens == 3)
    assert (stats.capped_prompts, stats.skipped_prompts) == (1, 1)


def test_stops_at_the_start_of_a_new_turn(tiny_model):
    """A model that writes "7" and then opens a fake turn with <|im_start|> is stopped there."""
    model, tokenizer = StudentModule(tiny_model).load_for_inference("cpu")
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert im_start in stop_token_ids(tokenizer, model)
    completion = seven_then(model, tokenizer, im_start)
    assert completion.text == "7" and completion.finish_reason == "stop" and completion.tokens == 2


def test_sample_seed_is_stable_and_independent_of_everything_else():
    assert sample_seed(0, "p1", 0) == sample_seed(0, "p1", 0) == 444186225  # not Python's salted hash()
    assert len({sample_seed(0, "p1", s) for s in range(100)}) == 100
    assert sample_seed(1, "p1", 0) != sample_seed(0, "p1", 0) != sample_seed(0, "p2", 0)
    assert all(0 <= sample_seed(9, str(i), 3) < 2**31 for i in range(100))
