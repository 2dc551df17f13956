"""``w2sr report`` with the cost of each arm (issue 25.3): the W2SR arm (teacher generation + verification + SFT fit)
and the RL arm in device-seconds and FLOPs, the cost ratio, and RGR against the reference with its interval beside
it; report.json keys ``cost`` (per arm) and ``cost_ratio``. The arithmetic of the arms is
tests/evaluation/test_arm_costs.py's; here, what the report does with it, on hand-made and on real files.

Run: ``pytest tests/evaluation/test_report_cost.py``.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, shared_file
from test_report_compare import _ones, _results

from w2sr.evaluation.report import main, make_report
from w2sr.records.cost import StageCost

GEN = StageCost(stage="generate", wall_seconds=10.0, devices=2, cpu_seconds=15.0, tokens_generated=1000, parameters=100)
VER = StageCost(stage="verify", wall_seconds=2.0, cpu_seconds=6.0, parameters=0)
SFT = StageCost(stage="fit", wall_seconds=30.0, devices=1, cpu_seconds=25.0, tokens_trained=400, parameters=300)
RL = StageCost(
    stage="rl", wall_seconds=100.0, devices=2, cpu_seconds=150.0, tokens_generated=5000, tokens_trained=5000,
    parameters=300, phases={"rollout": 60.0, "scoring": 5.0, "training": 35.0},
)  # fmt: skip


def test_report_holds_each_arm_cost_the_ratio_and_rgr_beside_it(tmp_path, capsys):
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "cost.json").write_text(json.dumps({"cost": SFT.to_dict()}))
    (tmp_path / "rl").mkdir()
    (tmp_path / "rl" / "cost.json").write_text(json.dumps({"cost": RL.to_dict()}))
    summary = tmp_path / "summary.json"
    summary.write_text(
        json.dumps({"accuracy": 0.5, "records": 8, "cost": VER.to_dict(), "generation_cost": [GEN.to_dict()]})
    )
    base = _results(tmp_path / "eval-base", {"x": _ones(100, 40)})
    w2sr = _results(tmp_path / "eval-w2sr", {"x": _ones(100, 55)})
    rl = _results(tmp_path / "eval-rl", {"x": _ones(100, 60)})
    report = make_report(
        [str(base), str(w2sr), str(rl)],
        tmp_path / "r",
        base="eval-base",
        reference="eval-rl",
        fit_runs=[str(tmp_path / "sft"), str(tmp_path / "rl")],
        teacher=str(summary),
    )
    assert list(report)[-2:] == ["cost", "cost_ratio"]
    assert report == json.loads((tmp_path / "r" / "report.json").read_text())
    # W2SR: 10 x 2 + 2 + 30 device-seconds; 2 x 100 x 1000 + 6 x 300 x 400 FLOPs. RL: 100 x 2; 8 x 300 x 5000
    assert report["cost"]["w2sr"]["device_seconds"] == 52.0 and report["cost"]["w2sr"]["flops"] == 920_000.0
    assert report["cost"]["w2sr"]["stages"] == ["generate", "verify", "fit"] and report["cost"]["w2sr"]["complete"]
    assert report["cost"]["rl"]["device_seconds"] == 200.0 and report["cost"]["rl"]["flops"] == 12_000_000.0
    [ratio] = report["cost_ratio"]
    assert ratio["device_seconds"] == pytest.approx(52 / 200) and ratio["flops"] == pytest.approx(920_000 / 12e6)
    assert report["rgr"]["eval-w2sr"]["x"] == pytest.approx(0.75)
    lo, hi = report["rgr_ci95"]["eval-w2sr"]["x"]
    beside = f"RGR of eval-w2sr against eval-rl (x): 75% [{100 * lo:.0f}, {100 * hi:.0f}]"
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Cost of each arm" in md and "Cost ratio w2sr / rl: device-seconds 0.26x, FLOPs 0.0767x" in md
    assert f"- {beside}" in md
    out = capsys.readouterr().out
    assert "cost of w2sr (generate + verify + fit): 52.0 device-seconds, 9.2e+05 FLOPs" in out
    assert "cost ratio w2sr / rl: device-seconds 0.26x, FLOPs 0.0767x" in out and beside in out
    # the fit folders hold no training log: said, not refused
    assert report["fit_sources"]["sft"]["logger"] == "none"
    assert "no training log" in report["fit_notes"]["sft"]["train/loss"]
    # without fit runs or cards: no cost keys
    assert "cost" not in make_report([str(base)], tmp_path / "r2")
    # a summary that does not carry its generation card: --cards adds it; without it the stage is named missing
    bare = tmp_path / "bare_summary.json"
    bare.write_text(json.dumps({"accuracy": 0.5, "cost": VER.to_dict()}))
    card = tmp_path / "traces.jsonl.card.json"
    card.write_text(json.dumps({"cost": GEN.to_dict()}))
    args = ["--runs", str(base), "--fit_runs", str(tmp_path / "sft"), "--teacher", str(bare)]
    main([*args, "--output_dir", str(tmp_path / "r3")])
    assert json.loads((tmp_path / "r3" / "report.json").read_text())["cost"]["w2sr"]["missing"] == ["generate"]
    main([*args, "--cards", str(card), "--output_dir", str(tmp_path / "r4")])
    arm = json.loads((tmp_path / "r4" / "report.json").read_text())["cost"]["w2sr"]
    assert arm["stages"] == ["verify", "generate", "fit"] and arm["missing"] == [] and arm["device_seconds"] == 52.0


@pytest.mark.slow
def test_report_costs_from_the_files_the_real_commands_write(tmp_path, tiny_model, capsys):
    """generate -> verify -> fit (SFT) -> a fit recorded as the RL arm (the CostMeter's ``stage: rl``, as the RL fit
    writes it) -> three score-only evaluations -> ``w2sr report``: the arms, the ratio and RGR beside it."""
    problems = shared_file("math500/test.jsonl")
    quiet = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
    traces, verified, summary = tmp_path / "traces.jsonl", tmp_path / "verified.jsonl", tmp_path / "summary.json"
    generate = ["generate", "--model.model_name_or_path", tiny_model, "--problems", str(problems), "--limit", "3"]
    generate += ["--output", str(traces), "--sampling.n", "2", "--sampling.temperature", "1.0"]
    generate += ["--sampling.max_new_tokens", "12", *quiet]
    verify = ["verify", "--input", str(traces), "--output", str(verified), "--summary", str(summary)]
    for command in (generate, verify):
        code, out = run_cli(command, capsys)
        assert code == 0, out[-3000:]
    fit = ["fit", "--model.model_name_or_path", tiny_model, "--model.lora.r", "4", "--data.train_file", str(verified)]
    fit += ["--data.val_fraction", "0", "--data.batch_size", "2", "--data.cache_dir", "null"]
    fit += ["--trainer.max_epochs", "1", "--trainer.enable_checkpointing", "false", *quiet]
    sft, rl = tmp_path / "sft", tmp_path / "rl"
    assert run_cli([*fit, "--trainer.default_root_dir", str(sft)], capsys)[0] == 0
    as_rl = ["--trainer.callbacks+=w2sr.callbacks.CostMeter", "--trainer.callbacks.stage=rl"]
    assert run_cli([*fit, "--trainer.default_root_dir", str(rl), *as_rl], capsys)[0] == 0
    for name, right in (("base", 8), ("w2sr", 14), ("rl", 16)):  # score-only: completions with known answers
        predictions = tmp_path / f"{name}.jsonl"
        rows = [{"id": f"p{i}", "answer": "7", "completion": f"\\boxed{{{7 if i < right else 8}}}"} for i in range(20)]
        predictions.write_text("".join(json.dumps({**r, "benchmark": "toy"}) + "\n" for r in rows))
        evaluate = ["evaluate", "--predictions", str(predictions), "--output_dir", str(tmp_path / f"eval-{name}")]
        assert run_cli([*evaluate, *quiet], capsys)[0] == 0
    args = ["report", "--runs", *(str(tmp_path / f"eval-{n}") for n in ("base", "w2sr", "rl"))]
    args += ["--base", "eval-base", "--reference", "eval-rl", "--fit_runs", str(sft), str(rl)]
    args += ["--teacher", str(summary), "--output_dir", str(tmp_path / "report"), *quiet[:2]]
    code, out = run_cli(args, capsys)
    assert code == 0, out[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    generated = json.loads((tmp_path / "traces.jsonl.card.json").read_text())["cost"]
    fitted = json.loads((sft / "cost.json").read_text())["cost"]
    w2sr_arm, rl_arm = report["cost"]["w2sr"], report["cost"]["rl"]
    assert w2sr_arm["stages"] == ["generate", "verify", "fit"] and w2sr_arm["complete"] and rl_arm["stages"] == ["rl"]
    assert w2sr_arm["flops"] == generated["flops"] + fitted["flops"] > 0
    [ratio] = report["cost_ratio"]
    assert ratio["flops"] == pytest.approx(w2sr_arm["flops"] / rl_arm["flops"])
    assert ratio["device_seconds"] == pytest.approx(w2sr_arm["device_seconds"] / rl_arm["device_seconds"])
    assert report["rgr"]["eval-w2sr"]["toy"] == pytest.approx(0.75)  # (14 - 8) / (16 - 8)
    assert "cost ratio w2sr / rl: device-seconds" in out and "RGR of eval-w2sr against eval-rl (toy): 75% [" in out
    assert "## Cost of each arm" in (tmp_path / "report" / "report.md").read_text()
