"""The cost of each stage through the real commands (issue 25.3): ``w2sr generate`` (HF backend, tiny model, MATH-500
problems) -> ``w2sr verify`` -> ``w2sr fit`` write non-zero, consistent costs (device-seconds = wall x devices, FLOPs =
2N per generated + 6N per trained token of the recorded counts and N), and ``w2sr.evaluation.cost`` adds them into the
W2SR arm and the ratio to an RL-stage fit. Verification's CPU seconds include its grading workers."""

from __future__ import annotations

import json
import resource

import pytest
from conftest import run_cli, shared_file

from w2sr.evaluation.cost import arm_costs, cost_markdown
from w2sr.records.cost import FLOPS_FORMULA, checkpoint_parameter_count, read_cost
from w2sr.records.jsonl import read_jsonl

QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]


def fit_args(tiny_model, verified, run, *extra):
    return [
        "fit",
        "--model.model_name_or_path",
        tiny_model,
        "--model.lora.r",
        "4",
        "--data.train_file",
        str(verified),
        "--data.val_fraction",
        "0",
        "--data.batch_size",
        "2",
        "--data.cache_dir",
        "null",
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.default_root_dir",
        str(run),
        *QUIET,
        *extra,
    ]


def check_consistent(cost: dict, stage: str) -> None:
    assert cost["stage"] == stage and cost["flops_formula"] == FLOPS_FORMULA
    assert cost["wall_seconds"] > 0 and cost["cpu_seconds"] > 0 and cost["peak_memory_bytes"] > 0
    assert cost["device_seconds"] == pytest.approx(cost["wall_seconds"] * cost["devices"], rel=1e-12)
    n = cost["parameters"]
    assert cost["flops"] == 2 * n * cost["tokens_generated"] + 6 * n * cost["tokens_trained"]


@pytest.mark.slow
def test_generate_verify_fit_record_their_cost_and_make_the_arms(tmp_path, tiny_model, capsys):
    problems = shared_file("math500/test.jsonl")
    traces, verified, summary = tmp_path / "traces.jsonl", tmp_path / "verified.jsonl", tmp_path / "summary.json"
    code, out = run_cli(
        [
            "generate", "--model.model_name_or_path", tiny_model, "--problems", str(problems), "--limit", "3",
            "--output", str(traces), "--sampling.n", "2", "--sampling.temperature", "1.0",
            "--sampling.max_new_tokens", "12", *QUIET,
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, out[-2000:]
    card = json.loads((tmp_path / "traces.jsonl.card.json").read_text())
    generated = card["cost"]
    check_consistent(generated, "generate")
    assert generated["devices"] == 1 and generated["device_kind"] == "cpu"
    assert (
        generated["tokens_generated"]
        == card["tokens_generated"]
        == sum(r["completion_tokens"] for r in read_jsonl(traces))
    )
    from transformers import AutoModelForCausalLM

    assert generated["parameters"] == AutoModelForCausalLM.from_pretrained(tiny_model).num_parameters()

    code, out = run_cli(
        ["verify", "--input", str(traces), "--output", str(verified), "--summary", str(summary)], capsys
    )
    assert code == 0, out[-2000:]
    teacher = json.loads(summary.read_text())
    assert teacher["cost"]["stage"] == "verify" and teacher["cost"]["flops"] == 0
    assert teacher["generation_cost"] == [generated] and teacher["generation_cost_missing"] == []
    assert teacher["teacher_cost"]["device_seconds"] == pytest.approx(
        generated["device_seconds"] + teacher["cost"]["device_seconds"]
    )

    sft, rl = tmp_path / "sft", tmp_path / "rl"
    code, out = run_cli(fit_args(tiny_model, verified, sft), capsys)
    assert code == 0, out[-2000:]
    fitted = json.loads((sft / "cost.json").read_text())["cost"]
    check_consistent(fitted, "fit")
    assert fitted["devices"] == 1 and fitted["tokens_generated"] == 0
    # one epoch: every trace's targets once (counted here with the one tokenization fit uses)
    from w2sr.records.traces import read_traces
    from w2sr.training.datamodule import tokenize_trace
    from w2sr.training.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    assert fitted["tokens_trained"] == sum(tokenize_trace(tokenizer, t).num_targets for t in read_traces(verified))
    assert fitted["parameters"] == generated["parameters"] + checkpoint_parameter_count(sft / "export")  # + LoRA

    # a configured meter replaces the default one (not a second cost.json writer): here it marks the fit as RL's
    code, out = run_cli(
        fit_args(
            tiny_model, verified, rl, "--trainer.callbacks+=w2sr.callbacks.CostMeter", "--trainer.callbacks.stage=rl"
        ),
        capsys,
    )
    assert code == 0, out[-2000:]
    assert read_cost(rl).stage == "rl"

    costs = arm_costs([sft, rl], teacher=summary, cards=[tmp_path / "traces.jsonl.card.json"])
    w2sr = costs.arms["w2sr"]
    assert w2sr.complete and w2sr.total.stages == ["generate", "verify", "fit"]
    assert w2sr.total.device_seconds == pytest.approx(
        generated["device_seconds"] + teacher["cost"]["device_seconds"] + fitted["device_seconds"]
    )
    assert w2sr.total.flops == generated["flops"] + fitted["flops"]
    [ratio] = costs.ratios
    assert ratio.flops == pytest.approx(w2sr.total.flops / costs.arms["rl"].total.flops)
    assert "Cost ratio w2sr / rl" in cost_markdown(costs)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_verify_counts_its_grading_workers_cpu(tmp_path, traces_file, capsys):
    summary = tmp_path / "summary.json"
    before = _children_cpu()
    code, out = run_cli(
        ["verify", "--input", str(traces_file), "--output", str(tmp_path / "v.jsonl"), "--summary", str(summary)]
        + ["--workers", "2"],
        capsys,
    )
    assert code == 0, out[-2000:]
    workers = _children_cpu() - before  # the two workers, reaped when the pool closed
    cost = json.loads(summary.read_text())["cost"]
    assert workers > 0.2, workers
    assert cost["cpu_seconds"] >= workers, (cost, workers)
    assert json.loads(summary.read_text())["generation_cost_missing"] == [str(traces_file)]  # no card: named
