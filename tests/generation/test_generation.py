"""Generation: batched HF backend with stop tokens and finish reasons; the toy teacher backend; the stage."""

from __future__ import annotations

from conftest import seven_then

from w2sr.generation.base import SamplingOptions
from w2sr.generation.hf import HFBackend, generate_completions, stop_token_ids
from w2sr.generation.run import generate_traces
from w2sr.generation.toy import ToyTeacherBackend
from w2sr.records.prompts import PromptOptions
from w2sr.toy import make_problems
from w2sr.training.module import StudentModule


def test_stop_tokens_include_end_of_turn_and_eos(tiny_tokenizer):
    ids = stop_token_ids(tiny_tokenizer)
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
    assert tiny_tokenizer.convert_tokens_to_ids("<|endoftext|>") in ids


def test_hf_generation_counts_and_reasons(tiny_model):
    model, tokenizer = StudentModule(tiny_model).load_for_inference("cpu")
    prompts = ["<|im_start|>user\nCompute 1 + 2.<|im_end|>\n<|im_start|>assistant\n", "short"]
    sampling = SamplingOptions(n=3, temperature=1.0, max_new_tokens=8, batch_size=2, seed=1)
    out = generate_completions(model, tokenizer, prompts, sampling)
    assert [len(samples) for samples in out] == [3, 3]
    for samples in out:
        for c in samples:
            assert c.finish_reason in ("stop", "length") and 1 <= c.tokens <= 8
            assert c.finish_reason == "stop" or c.tokens == 8
    again = generate_completions(model, tokenizer, prompts, sampling)
    assert [[c.text for c in s] for s in out] == [[c.text for c in s] for s in again]  # seeded
    assert tokenizer.padding_side == "left" and not model.training


def test_hf_stops_on_end_of_turn(tiny_model):
    """Force the model to emit <|im_end|> first: the completion must stop with reason 'stop' and 1 token."""
    import torch

    model, tokenizer = StudentModule(tiny_model).load_for_inference("cpu")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied embeddings: all logits 0 ...
        model.model.norm.weight.fill_(1.0)
    bias = torch.full((model.config.vocab_size,), -1e4)
    bias[im_end] = 1e4
    model.lm_head.bias = torch.nn.Parameter(bias)
    [[completion]] = generate_completions(model, tokenizer, ["x"], SamplingOptions(max_new_tokens=5))
    assert completion.finish_reason == "stop" and completion.tokens == 1 and completion.text == ""


def test_toy_backend_and_stage(tiny_tokenizer):
    problems = make_problems(5, 0, "test")
    backend = ToyTeacherBackend(tiny_tokenizer, error_rate=0.0)
    traces = generate_traces(backend, problems, tiny_tokenizer, PromptOptions(), SamplingOptions(n=2, temperature=1.0))
    assert [(t.problem.id, t.sample) for t in traces] == [(p.id, s) for p in problems for s in (0, 1)]
    assert all(t.finish_reason == "stop" and f"\\boxed{{{t.problem.answer}}}" in t.completion for t in traces)
    assert traces[0].prompt[1]["content"].startswith(problems[0].problem)
    cut = generate_traces(backend, problems, tiny_tokenizer, PromptOptions(), SamplingOptions(max_new_tokens=4))
    assert all(t.finish_reason == "length" and t.completion_tokens == 4 for t in cut)


def test_hf_backend_runs_the_stage(tiny_model):
    module = StudentModule(tiny_model)
    model, tokenizer = module.load_for_inference("cpu")
    backend = HFBackend(model, tokenizer, name=module.label, progress=False)
    traces = generate_traces(
        backend, make_problems(3, 0, "test"), tokenizer, PromptOptions(), SamplingOptions(max_new_tokens=4)
    )
    assert len(traces) == 3 and all(t.teacher == tiny_model for t in traces)


def test_stops_on_end_of_turn_when_the_config_names_only_endoftext(tiny_model):
    """The Qwen2.5 base case: generation_config.eos_token_id is <|endoftext|> only, turns end with <|im_end|>."""
    model, tokenizer = StudentModule(tiny_model).load_for_inference("cpu")
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = endoftext
    assert im_end in stop_token_ids(tokenizer, model)
    completion = seven_then(model, tokenizer, im_end)  # "7", then <|im_end|> as soon as it may
    assert completion.text == "7" and completion.finish_reason == "stop" and completion.tokens == 2


def test_model_generation_defaults_do_not_leak(tiny_model):
    """A repetition penalty in the model's generation_config must not change w2sr's greedy decoding."""
    model, tokenizer = StudentModule(tiny_model).load_for_inference("cpu")
    prompts = ["<|im_start|>user\nCompute 1 + 2 + 3.<|im_end|>\n<|im_start|>assistant\n"]
    sampling = SamplingOptions(max_new_tokens=12)
    plain = generate_completions(model, tokenizer, prompts, sampling)
    model.generation_config.repetition_penalty = 50.0
    model.generation_config.max_new_tokens = 1
    assert generate_completions(model, tokenizer, prompts, sampling)[0][0].text == plain[0][0].text
