"""Fast tests for the embedded default: toy problems, the weak teacher, the tokenizer and the tiny model."""

from __future__ import annotations

import json
import re

import pytest

from w2sr import toy
from w2sr.records.jsonl import OutputExistsError
from w2sr.toy import (
    CHAT_TEMPLATE,
    SYSTEM_PROMPT,
    USER_SUFFIX,
    ToyTeacher,
    build_tiny_model,
    build_tokenizer,
    default_corpus,
    make_problems,
    reference_solution,
    write_toy_data,
)


def last_box(text: str) -> str | None:
    found = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return found[-1] if found else None


def messages(problem: str, completion: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": problem + USER_SUFFIX}]
    return msgs + ([{"role": "assistant", "content": completion}] if completion is not None else [])


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(default_corpus())


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(
        str(tmp_path_factory.mktemp("tiny") / "model"),
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=2,
    )


def test_problems_are_deterministic_distinct_and_disjoint():
    train, test = make_problems(500, 0, "train"), make_problems(100, 0, "test")
    assert [p.to_dict() for p in train] == [p.to_dict() for p in make_problems(500, 0, "train")]
    assert [p.problem for p in make_problems(500, 1, "train")] != [p.problem for p in train]
    assert len({p.id for p in train + test}) == 600
    assert len({p.problem for p in train}) == 500
    assert not {p.problem for p in train} & {p.problem for p in make_problems(300, 1, "test")}
    assert all(p.source == "toy-arith" and isinstance(p.answer, str) for p in train + test)
    with pytest.raises(ValueError):
        make_problems(1, 0, "validation")


def test_reference_solutions_box_the_gold_answer():
    for p in make_problems(toy.DEFAULT_N_TRAIN, 0, "train") + make_problems(toy.DEFAULT_N_TEST, 0, "test"):
        expression = p.problem.removeprefix("Compute ").removesuffix(".")
        assert str(eval(expression)) == p.answer  # noqa: S307 - digits and +/- only
        solution = reference_solution(p.problem)
        assert last_box(solution) == p.answer and solution.count("\\boxed") == 1


def test_teacher_is_deterministic_and_imperfect_in_the_expected_band():
    problems = make_problems(1000, 0, "train")
    teacher = ToyTeacher(error_rate=0.3, seed=0)
    assert teacher.name == "toy-teacher(error_rate=0.3)"
    traces = [teacher.solve(p.problem) for p in problems]
    assert traces == [ToyTeacher(error_rate=0.3, seed=0).solve(p.problem) for p in problems]
    assert traces != [ToyTeacher(error_rate=0.3, seed=1).solve(p.problem) for p in problems]
    assert traces != [teacher.solve(p.problem, sample=1) for p in problems]
    boxes = [last_box(t) for t in traces]
    accuracy = sum(b == p.answer for b, p in zip(boxes, problems)) / len(problems)
    assert 0.63 <= accuracy <= 0.77
    wrong_box = sum(b is not None and b != p.answer for b, p in zip(boxes, problems))
    no_box = sum(b is None for b in boxes)
    assert 0.12 <= wrong_box / len(problems) <= 0.24 and 0.06 <= no_box / len(problems) <= 0.18
    assert all(last_box(ToyTeacher(error_rate=0.0).solve(p.problem)) == p.answer for p in problems[:200])
    assert all(last_box(ToyTeacher(error_rate=1.0).solve(p.problem)) != p.answer for p in problems[:200])


def test_tokenizer_splits_digits_and_round_trips(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    text = "Step 1: 47 + 85 = 132.\nThe answer is \\boxed{132}. Wait, ümlaut?"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("12345", add_special_tokens=False).input_ids)
    assert pieces == list("12345")
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>" and tokenizer.padding_side == "left"
    assert {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.all_special_tokens)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    prompt = tokenizer.apply_chat_template(messages("Compute 47 + 85 - 23.", "x"), tokenize=False)
    for sample in [text, prompt, *default_corpus(seed=3, n=20)]:
        assert (
            reloaded(sample, add_special_tokens=False).input_ids
            == tokenizer(sample, add_special_tokens=False).input_ids
        )
    assert reloaded.chat_template == CHAT_TEMPLATE and reloaded.padding_side == "left"
    assert reloaded.eos_token == "<|endoftext|>" and reloaded.pad_token == "<|endoftext|>"


def test_chat_template_renders_prompt_and_assistant_turn(tokenizer):
    problem = "Compute 47 + 85 - 23."
    prompt = tokenizer.apply_chat_template(messages(problem), add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{problem}{USER_SUFFIX}<|im_end|>\n<|im_start|>assistant\n"
    )
    full = tokenizer.apply_chat_template(messages(problem, reference_solution(problem)), tokenize=False)
    assert full.startswith(prompt) and full.endswith("\\boxed{109}.<|im_end|>\n")
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    completion_ids = tokenizer(full[len(prompt) :], add_special_tokens=False).input_ids
    assert completion_ids[-2] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert prompt_ids + completion_ids == tokenizer(full, add_special_tokens=False).input_ids


def test_tiny_model_builds_reloads_and_generates(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    im_end, eot = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    assert model.generation_config.eos_token_id == [im_end, eot] and model.generation_config.pad_token_id == eot
    prompts = [toy.render_prompt(tokenizer, p.problem) for p in make_problems(3, 0, "test")]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 3 and out.shape[1] <= batch.input_ids.shape[1] + 5
    again = AutoModelForCausalLM.from_pretrained(
        build_tiny_model(
            tiny_model_dir,
            overwrite=True,
            hidden_size=64,
            num_hidden_layers=2,
            intermediate_size=128,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(OutputExistsError):
        build_tiny_model(tiny_model_dir)
    with pytest.raises(ValueError):
        build_tiny_model(tiny_model_dir + "-qwen", arch="qwen2")


def test_write_toy_data_and_cli(tmp_path, capsys):
    write_toy_data(str(tmp_path / "a"), n_train=50, n_test=10)
    train = [json.loads(line) for line in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    assert len(train) == 50 and set(train[0]) == {"id", "problem", "answer", "source"}
    with pytest.raises(OutputExistsError):
        write_toy_data(str(tmp_path / "a"), n_train=50, n_test=10)
    write_toy_data(str(tmp_path / "a"), n_train=60, n_test=10, overwrite=True)
    out = tmp_path / "cli"
    toy.main(["data", "--output", str(out), "--n-train", "40", "--n-test", "8"])
    assert len((out / "test.jsonl").read_text().splitlines()) == 8
    before = (out / "train.jsonl").read_text()
    with pytest.raises(SystemExit) as exc:
        toy.main(["data", "--output", str(out), "--n-train", "5"])
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err
    assert (out / "train.jsonl").read_text() == before


def test_committed_data_matches_the_generator():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "data" / "toy"
    if not (root / "train.jsonl").exists():
        pytest.skip("data/toy not written yet (python -m w2sr.toy data --output data/toy)")
    for split, n in (("train", toy.DEFAULT_N_TRAIN), ("test", toy.DEFAULT_N_TEST)):
        records = [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]
        assert records == [p.to_dict() for p in make_problems(n, 0, split)]
