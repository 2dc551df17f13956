"""README promises about measuring: ``w2sr evaluate`` and ``ReasoningAccuracy`` score a model of *known* accuracy
exactly (a grader that always says "wrong" or always "right" fails here), an adapter changes what is evaluated, and
``ModelCheckpoint(monitor="val/reasoning_acc", mode="max")`` keeps the best step.

Known accuracies come from backends whose answers we control: the toy teacher without slips (100%), a backend that
always answers gold + 1 (0%), the toy teacher with slips (its accuracy recomputed here independently of w2sr's
grader), and a stubbed ``generate_completions`` that returns gold / wrong boxes on a schedule.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import REPO
from lightning.pytorch.callbacks import ModelCheckpoint

import w2sr.training.callbacks
from w2sr.cli import main
from w2sr.evaluation.run import EvalTask, run_evaluation
from w2sr.generation.base import Completion, SamplingOptions
from w2sr.generation.toy import ToyTeacherBackend
from w2sr.records.jsonl import read_jsonl, write_jsonl
from w2sr.records.prompts import PromptOptions
from w2sr.toy import ToyTeacher, make_problems
from w2sr.training.callbacks import ReasoningAccuracy
from w2sr.training.datamodule import TraceDataModule
from w2sr.training.module import StudentModule
from w2sr.verification.grade import VerifyOptions

QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]


class GoldPlusOne:
    """A backend that always answers ``gold + 1`` in a box: every answer is wrong, and each has a box."""

    name = "gold-plus-one"

    def generate(self, requests, sampling):
        return [
            [Completion(f"So the result is \\boxed{{{int(r.problem.answer) + 1}}}.", "stop", 8)] * sampling.n
            for r in requests
        ]


def _evaluate(backend, tokenizer, problems, out: Path) -> dict:
    task = EvalTask("toy", problems, SamplingOptions(n=2, temperature=1.0))
    return run_evaluation(
        backend, tokenizer, [task], out, prompt=PromptOptions(), verify=VerifyOptions(), model_label="stub"
    )


def test_evaluate_scores_a_perfect_teacher_100_and_a_wrong_one_0(tmp_path, tiny_tokenizer):
    problems = make_problems(12, 3, "test")
    perfect = _evaluate(ToyTeacherBackend(tiny_tokenizer, error_rate=0.0), tiny_tokenizer, problems, tmp_path / "a")
    row = perfect["benchmarks"]["toy"]
    assert row == {**row, "problems": 12, "samples_per_problem": 2, "unscored": 0, "avg@n": 1.0, "no_answer": 0}
    assert row["pass@k"] == {"1": 1.0, "2": 1.0} and row["maj@k"]["1"] == 1.0
    rows = read_jsonl(tmp_path / "a" / "predictions.jsonl")
    assert [r["prediction"] for r in rows] == [p.answer for p in problems for _ in range(2)]
    assert all(r["correct"] is True for r in rows)

    wrong = _evaluate(GoldPlusOne(), tiny_tokenizer, problems, tmp_path / "b")
    assert wrong["benchmarks"]["toy"]["avg@n"] == 0.0 and wrong["benchmarks"]["toy"]["unscored"] == 0
    assert wrong["benchmarks"]["toy"]["pass@k"]["2"] == 0.0
    rows = read_jsonl(tmp_path / "b" / "predictions.jsonl")
    assert [r["prediction"] for r in rows] == [str(int(p.answer) + 1) for p in problems for _ in range(2)]
    assert json.loads((tmp_path / "b" / "results.json").read_text())["benchmarks"]["toy"]["avg@n"] == 0.0


def _independent_toy_verdict(completion: str, gold: str) -> bool:
    """The toy teacher's answer read without w2sr: the last ``\\boxed{N}``, else "The answer is N." (the README's
    extraction order), compared as integers."""
    boxes = re.findall(r"\\boxed\{(-?\d+)\}", completion)
    said = re.findall(r"[Tt]he answer is (-?\d+)", completion)
    answer = boxes[-1] if boxes else (said[-1] if said else None)
    return answer is not None and int(answer) == int(gold)


def test_evaluate_cli_with_the_toy_teacher_matches_an_independent_count(tmp_path, tiny_model):
    """``w2sr evaluate --backend toy``: the slipping teacher's accuracy equals the share of its answers that are
    right, counted here with a regex (neither 0 nor 1, so an always-wrong or always-right grader fails)."""
    problems = make_problems(40, 5, "test")
    problem_file = tmp_path / "problems.jsonl"
    write_jsonl(problem_file, (p.to_dict() for p in problems))
    teacher = ToyTeacher(error_rate=0.3, seed=0)  # what --backend toy runs (sampling.seed 0)
    expected = [_independent_toy_verdict(teacher.solve(p.problem), p.answer) for p in problems]
    assert 0 < sum(expected) < len(expected)
    main(
        [
            "evaluate",
            "--model.model_name_or_path",
            tiny_model,
            "--backend",
            "toy",
            "--problems",
            str(problem_file),
            "--output_dir",
            str(tmp_path / "eval"),
            *QUIET,
        ]
    )
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    (row,) = results["benchmarks"].values()
    assert row["problems"] == len(expected) and row["unscored"] == 0
    assert row["avg@n"] == pytest.approx(sum(expected) / len(expected))
    rows = read_jsonl(tmp_path / "eval" / "predictions.jsonl")
    assert [r["correct"] for r in rows] == expected


@pytest.mark.slow
def test_evaluate_uses_the_adapter(tmp_path, tiny_model):
    """base + adapter is evaluated as the merged model, and differently from the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from w2sr.training.loading import load_tokenizer

    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False),
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    load_tokenizer(tiny_model).save_pretrained(tmp_path / "merged")
    problem_file = tmp_path / "problems.jsonl"
    write_jsonl(problem_file, (p.to_dict() for p in make_problems(6, 1, "test")))
    completions = {}
    for name, model_args in (
        ("base", ["--model.model_name_or_path", tiny_model]),
        ("adapter", ["--model.model_name_or_path", tiny_model, "--model.adapter_path", str(tmp_path / "adapter")]),
        ("merged", ["--model.model_name_or_path", str(tmp_path / "merged")]),
    ):
        main(
            [
                "evaluate",
                *model_args,
                "--problems",
                str(problem_file),
                "--output_dir",
                str(tmp_path / name),
                "--sampling.max_new_tokens",
                "12",
                *QUIET,
            ]
        )
        completions[name] = [r["completion"] for r in read_jsonl(tmp_path / name / "predictions.jsonl")]
    assert completions["adapter"] == completions["merged"]
    assert completions["adapter"] != completions["base"]
    results = json.loads((tmp_path / "adapter" / "results.json").read_text())
    assert results["model"] == f"{tiny_model} + {tmp_path / 'adapter'}"


# ------------------------------------------------------------------------------------- the ReasoningAccuracy callback
def _stub_generation(monkeypatch, datamodule: TraceDataModule, right_per_call: list[int] | None):
    """Replace generation in the callback: call ``k`` answers the first ``right_per_call[k]`` problems with their gold
    box and the rest with gold + 1 (``None``: all right). Returns the list of prompts seen per call."""
    calls: list[list[str]] = []

    def fake_generate(model, tokenizer, prompts, sampling, **kwargs):
        gold = {}
        for trace in datamodule.validation_problems():
            from w2sr.records.prompts import render_prompt

            gold[render_prompt(tokenizer, trace.prompt)] = int(trace.problem.answer)
        right = len(prompts) if right_per_call is None else right_per_call[len(calls)]
        calls.append(list(prompts))
        return [
            [Completion(f"Step 1: done.\nThe answer is \\boxed{{{gold[p] + (0 if i < right else 1)}}}.", "stop", 5)]
            for i, p in enumerate(prompts)
        ]

    monkeypatch.setattr(w2sr.training.callbacks, "generate_completions", fake_generate)
    return calls


def _fit(tiny_model, traces_file, root, callbacks, max_steps, **trainer_kwargs):
    module = StudentModule(tiny_model, finetune="full")
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, batch_size=4, val_fraction=0.3)
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
        default_root_dir=str(root),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **trainer_kwargs,
    )
    return trainer, module, dm


@pytest.mark.parametrize("all_right", [True, False])
def test_callback_scores_gold_answers_1_and_wrong_answers_0(monkeypatch, traces_file, tiny_model, tmp_path, all_right):
    callback = ReasoningAccuracy(every_n_steps=1, num_problems=4, max_new_tokens=8)
    trainer, module, dm = _fit(tiny_model, traces_file, tmp_path, [callback], 2, enable_checkpointing=False)
    calls = _stub_generation(monkeypatch, dm, None if all_right else [0, 0, 0])
    trainer.fit(module, dm)
    expected = 1.0 if all_right else 0.0
    assert callback.history == [(0, expected), (1, expected), (2, expected)]
    assert [len(c) for c in calls] == [4, 4, 4]
    assert float(trainer.callback_metrics["val/reasoning_acc"]) == expected


def test_model_checkpoint_keeps_the_step_with_the_best_reasoning_accuracy(
    monkeypatch, traces_file, tiny_model, tmp_path
):
    """A real ModelCheckpoint monitoring val/reasoning_acc (mode max, top 1) keeps the step where it was highest."""
    callback = ReasoningAccuracy(every_n_steps=2, num_problems=4, max_new_tokens=8)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        filename="{step}",
        monitor="val/reasoning_acc",
        mode="max",
        save_top_k=1,
        every_n_train_steps=2,
    )
    trainer, module, dm = _fit(tiny_model, traces_file, tmp_path, [callback, checkpoint], 6)
    _stub_generation(monkeypatch, dm, [0, 1, 4, 2])  # steps 0, 2, 4, 6 -> 0.0, 0.25, 1.0, 0.5
    trainer.fit(module, dm)
    assert callback.history == [(0, 0.0), (2, 0.25), (4, 1.0), (6, 0.5)]
    assert float(checkpoint.best_model_score) == 1.0
    assert Path(checkpoint.best_model_path).name == "step=4.ckpt"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step=4.ckpt"]
    assert torch.load(checkpoint.best_model_path, weights_only=False)["global_step"] == 4


@pytest.mark.parametrize("grader, expected", [("default", 1.0), ("paper", 0.0)])
def test_callback_grades_with_its_grader_and_the_paper_config_uses_the_papers(
    monkeypatch, traces_file, tiny_model, tmp_path, grader, expected
):
    """``val/reasoning_acc`` follows the ``grader`` option: right answers written without a box ("The answer is 7.")
    count under ``default`` and not under ``paper`` (the last box only), and the paper's QLoRA config measures with
    the paper's rule, as its evaluation does (issue 26 item 8: it graded with ``default``)."""
    callback = ReasoningAccuracy(every_n_steps=0, num_problems=4, max_new_tokens=8, at_end=False, grader=grader)
    trainer, module, dm = _fit(tiny_model, traces_file, tmp_path, [callback], 1, enable_checkpointing=False)

    def unboxed(model, tokenizer, prompts, sampling, **kwargs):
        from w2sr.records.prompts import render_prompt

        gold = {render_prompt(tokenizer, t.prompt): t.problem.answer for t in dm.validation_problems()}
        return [[Completion(f"Step 1: done.\nThe answer is {gold[p]}.", "stop", 5)] for p in prompts]

    monkeypatch.setattr(w2sr.training.callbacks, "generate_completions", unboxed)
    trainer.fit(module, dm)
    assert callback.history == [(0, expected)]
    config = yaml.safe_load((REPO / "lightning_configs/paper/fit_qlora_qwen2.5-math-7b.yaml").read_text())
    (paper,) = [c for c in config["trainer"]["callbacks"] if c["class_path"] == "w2sr.callbacks.ReasoningAccuracy"]
    assert paper["init_args"]["grader"] == "paper"
