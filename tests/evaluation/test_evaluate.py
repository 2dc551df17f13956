"""w2sr evaluate: registered benchmarks on the tiny model, the results.json schema, score-only mode, adapters."""

from __future__ import annotations

import json
import time

import pytest
from conftest import shared_file

from w2sr.cli import main
from w2sr.records.jsonl import read_jsonl, write_jsonl

QUIET = ("--trainer.accelerator", "cpu", "--trainer.logger", "false")
SCHEMA = {"model", "adapter", "backend", "grader", "sampling", "seed", "versions", "benchmarks", "macro"}
PER_BENCHMARK = {
    "problems",
    "samples_per_problem",
    "avg@n",
    "pass@k",
    "maj@k",
    "ci95",
    "no_answer",
    "truncated",
    "unscored",
}


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model with a 2,048-token context: real benchmark prompts (MATH-500, AIME) fit in it."""
    from w2sr.toy import build_tiny_model

    return build_tiny_model(
        str(tmp_path_factory.mktemp("models") / "long"),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
    )


def test_prompts_longer_than_the_context_are_skipped_and_reported(tmp_path):
    """A model with a 32-token context cannot read MATH-500 prompts: the benchmark keeps its row, with 0 problems
    scored and the skipped prompts counted (never a crash, never a silent 0%)."""
    from w2sr.toy import build_tiny_model

    short = build_tiny_model(
        str(tmp_path / "short"),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=32,
    )
    data = shared_file("math500/test.jsonl").parents[1]
    main(
        [
            "evaluate",
            "--model.model_name_or_path",
            short,
            "--benchmarks",
            "math500",
            "--benchmark_dir",
            str(data),
            "--limit",
            "2",
            "--sampling.max_new_tokens",
            "4",
            "--output_dir",
            str(tmp_path / "eval"),
            *QUIET,
        ]
    )
    row = json.loads((tmp_path / "eval" / "results.json").read_text())["benchmarks"]["math500"]
    assert row["problems"] == 0 and row["avg@n"] is None and row["skipped_prompts"] == 2


def test_benchmarks_on_tiny_model(long_model, tmp_path):
    tiny_model = long_model
    data = shared_file("math500/test.jsonl").parents[1]
    out = tmp_path / "eval"
    main(
        [
            "evaluate",
            "--model.model_name_or_path",
            tiny_model,
            "--benchmarks",
            "[math500,aime24]",
            "--benchmark_dir",
            str(data),
            "--limit",
            "3",
            "--sampling.n",
            "2",
            "--sampling.temperature",
            "0.6",
            "--sampling.max_new_tokens",
            "6",
            "--n_per_benchmark",
            "{aime24: 4}",
            "--output_dir",
            str(out),
            *QUIET,
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert SCHEMA <= set(results) and results["grader"] == "default" and results["adapter"] is None
    assert results["backend"] == "hf" and results["seed"] == 0 and results["versions"]["math-verify"]
    assert list(results["benchmarks"]) == ["math500", "aime24"]
    math500, aime = results["benchmarks"]["math500"], results["benchmarks"]["aime24"]
    assert PER_BENCHMARK <= set(math500)
    assert math500["problems"] == 3 and math500["samples_per_problem"] == 2 and aime["samples_per_problem"] == 4
    assert set(math500["pass@k"]) == set(math500["maj@k"]) == {"1", "2"} and set(aime["pass@k"]) == {"1", "2", "4"}
    assert results["sampling"]["math500"]["n"] == 2 and aime["sampling"]["n"] == 4
    assert set(results["macro"]["pass@k"]) == {"1", "2"}
    records = read_jsonl(out / "predictions.jsonl")
    assert len(records) == 3 * 2 + 3 * 4
    assert all(
        {"benchmark", "prediction", "correct", "verify_status", "answer_class", "completion"} <= set(r) for r in records
    )
    assert math500["no_answer"] == sum(r["prediction"] is None for r in records if r["benchmark"] == "math500")
    with pytest.raises(SystemExit) as err:  # never overwritten without --overwrite
        main(
            [
                "evaluate",
                "--model.model_name_or_path",
                tiny_model,
                "--benchmarks",
                "[math500]",
                "--benchmark_dir",
                str(data),
                "--limit",
                "1",
                "--output_dir",
                str(out),
                *QUIET,
            ]
        )
    assert err.value.code == 2


def test_benchmark_sampling_defaults(long_model, tmp_path):
    """``--benchmark_sampling true`` takes temperature / top_p / n from the registry (AIME: more samples)."""
    tiny_model = long_model
    from w2sr.records.benchmarks import BENCHMARKS

    data = shared_file("aime24/test.jsonl").parents[1]
    main(
        [
            "evaluate",
            "--model.model_name_or_path",
            tiny_model,
            "--benchmarks",
            "aime24",
            "--benchmark_dir",
            str(data),
            "--limit",
            "1",
            "--benchmark_sampling",
            "true",
            "--sampling.max_new_tokens",
            "2",
            "--output_dir",
            str(tmp_path),
            *QUIET,
        ]
    )
    results = json.loads((tmp_path / "results.json").read_text())
    sampling = results["benchmarks"]["aime24"]["sampling"]
    assert (sampling["n"], sampling["temperature"], sampling["top_p"]) == (BENCHMARKS["aime24"].n, 0.6, 0.95)
    assert results["benchmarks"]["aime24"]["samples_per_problem"] == BENCHMARKS["aime24"].n > 1


def test_unknown_benchmark_and_gated_gpqa_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["evaluate", "--benchmarks", "[math500,mmlu]", "--output_dir", str(tmp_path), *QUIET])
    message = capsys.readouterr().err
    assert err.value.code == 2 and "mmlu" in message and "gpqa_diamond" in message and "minerva_math" in message
    with pytest.raises(SystemExit) as err:  # hub access is off in tests: a missing / gated download
        main(["evaluate", "--benchmarks", "gpqa_diamond", "--output_dir", str(tmp_path), *QUIET])
    message = " ".join(capsys.readouterr().err.split())
    assert err.value.code == 2 and "Idavidrein/gpqa" in message and "gated" in message
    with pytest.raises(SystemExit) as err:  # --benchmark_dir without the benchmark's folder
        main(
            [
                "evaluate",
                "--benchmarks",
                "gpqa_diamond",
                "--benchmark_dir",
                str(tmp_path),
                "--output_dir",
                str(tmp_path / "o"),
                *QUIET,
            ]
        )
    assert err.value.code == 2 and "gpqa_diamond/test.jsonl" in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "o").exists()


def _score_only_file(path):
    """Completions made elsewhere, with their own field names: 3 problems x 3 samples (plus one bad gold)."""
    rows = []
    for qid, gold, outs in (
        ("p1", "1/2", ["\\boxed{0.5}", "\\boxed{\\frac12}", "\\boxed{2}"]),  # 2 right
        ("p2", "3", ["\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{3}"]),  # 1 right, wrong majority
        ("p3", "7", ["no box", "\\boxed{8}", "\\boxed{7}"]),  # 1 right, tie
        ("p4", "", ["\\boxed{1}"] * 3),
    ):  # unscored: empty gold
        for index, text in enumerate(outs):
            rows.append({"qid": qid, "output": text, "gold": gold, "idx": index, "dataset": "mine"})
    write_jsonl(path, rows)
    return path


def test_score_only_loads_no_model(tmp_path, monkeypatch):
    import w2sr.generation.backends

    def no_model(*args, **kwargs):
        raise AssertionError("score-only mode must not load a model")

    monkeypatch.setattr(w2sr.generation.backends, "make_backend", no_model)
    source = _score_only_file(tmp_path / "elsewhere.jsonl")
    started = time.perf_counter()
    main(
        [
            "evaluate",
            "--predictions",
            str(source),
            "--output_dir",
            str(tmp_path / "scores"),
            "--options.id_field",
            "qid",
            "--options.completion_field",
            "output",
            "--options.answer_field",
            "gold",
            "--options.source_field",
            "dataset",
            *QUIET,
        ]
    )
    assert time.perf_counter() - started < 30
    results = json.loads((tmp_path / "scores" / "results.json").read_text())
    assert results["backend"] == "none" and results["model"] is None
    row = results["benchmarks"]["mine"]
    assert row["problems"] == 4 and row["unscored"] == 1 and row["samples_per_problem"] == 3
    assert row["avg@n"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 3)
    assert row["pass@k"]["1"] == pytest.approx(row["avg@n"])
    assert row["pass@k"]["3"] == pytest.approx(1.0)
    assert row["pass@k"]["2"] == pytest.approx((1 + (1 - 1 / 3) + (1 - 1 / 3)) / 3)
    # maj@3: p1 right (0.5 and \frac12 are one answer), p2 wrong (1/2 and 0.5 outvote 3), p3 tie -> 8 first: wrong
    assert row["maj@k"]["3"] == pytest.approx(1 / 3)
    assert row["maj@k"]["1"] == pytest.approx(1 / 3)
    assert row["no_answer"] == 1
    records = read_jsonl(tmp_path / "scores" / "predictions.jsonl")
    assert len(records) == 12 and {r["benchmark"] for r in records} == {"mine"}


def test_score_only_several_files_and_bad_input(tmp_path, capsys):
    first = tmp_path / "a" / "predictions.jsonl"
    first.parent.mkdir()
    write_jsonl(first, [{"id": 1, "completion": "\\boxed{2}", "answer": "2"}])
    second = tmp_path / "b.jsonl"
    write_jsonl(second, [{"id": 1, "completion": "\\boxed{3}", "answer": "2"}])
    main(["evaluate", "--predictions", str(first), str(second), "--output_dir", str(tmp_path / "s"), *QUIET])
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert {k: v["avg@n"] for k, v in results["benchmarks"].items()} == {"a": 1.0, "b": 0.0}
    assert results["macro"]["avg@n"] == 0.5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "completion": "x"}\n')
    with pytest.raises(SystemExit) as err:
        main(["evaluate", "--predictions", str(bad), "--output_dir", str(tmp_path / "t"), *QUIET])
    message = capsys.readouterr().err.replace("\n", "")
    assert err.value.code == 2 and "bad.jsonl:1" in message and "'answer'" in message


def test_adapter_changes_the_outputs(tiny_model, tmp_path):
    """An adapter that changes the model's outputs changes what is scored (peer harnesses have dropped adapters)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    )
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    data = shared_file("gsm8k/test.jsonl").parents[1]
    for name, extra in (("base", []), ("adapter", ["--model.adapter_path", str(adapter)])):
        main(
            [
                "evaluate",
                "--model.model_name_or_path",
                tiny_model,
                *extra,
                "--benchmarks",
                "gsm8k",
                "--benchmark_dir",
                str(data),
                "--limit",
                "4",
                "--sampling.max_new_tokens",
                "12",
                "--output_dir",
                str(tmp_path / name),
                *QUIET,
            ]
        )
    base = read_jsonl(tmp_path / "base" / "predictions.jsonl")
    tuned = read_jsonl(tmp_path / "adapter" / "predictions.jsonl")
    assert [r["completion"] for r in base] != [r["completion"] for r in tuned]
    assert json.loads((tmp_path / "adapter" / "results.json").read_text())["adapter"] == str(adapter)
