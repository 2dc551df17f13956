"""The cost of each arm (issue 25.3) from the files the stages write: W2SR = generation + verification + SFT fit,
RL = the RL fit, their ratio; parts without a record are named, never guessed. The same functions on files written
by the real commands: tests/cli/test_cost_e2e.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from w2sr.evaluation.cost import arm_costs, cost_markdown
from w2sr.records.cost import StageCost
from w2sr.records.jsonl import InputError

GEN = StageCost(stage="generate", wall_seconds=10.0, devices=2, cpu_seconds=15.0, tokens_generated=1000, parameters=100)
VER = StageCost(stage="verify", wall_seconds=2.0, cpu_seconds=6.0, parameters=0)
SFT = StageCost(stage="fit", wall_seconds=30.0, devices=1, cpu_seconds=25.0, tokens_trained=400, parameters=300)
RL = StageCost(
    stage="rl", wall_seconds=100.0, devices=2, cpu_seconds=150.0, tokens_generated=5000, tokens_trained=5000,
    parameters=300, phases={"rollout": 60.0, "scoring": 5.0, "training": 35.0},
)  # fmt: skip


def write(path, cost: StageCost, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**extra, "cost": cost.to_dict()}))
    return path


@pytest.fixture
def files(tmp_path):
    card = write(tmp_path / "traces.jsonl.card.json", GEN, complete=True)
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"accuracy": 0.5, "cost": VER.to_dict(), "generation_cost": [GEN.to_dict()]}))
    write(tmp_path / "sft" / "cost.json", SFT)
    write(tmp_path / "rl" / "cost.json", RL)
    return tmp_path, card, summary


def test_each_arm_adds_its_stages_and_the_ratio_divides_them(files):
    root, card, summary = files
    costs = arm_costs([root / "sft", root / "rl"], teacher=summary, cards=[card])  # the card is in the summary too
    w2sr, rl = costs.arms["w2sr"], costs.arms["rl"]
    assert w2sr.total.stages == ["generate", "verify", "fit"] and w2sr.complete
    # device-seconds: 10 x 2 + 2 x 1 + 30 x 1 = 52; FLOPs: 2 x 100 x 1000 + 6 x 300 x 400 = 920,000
    assert w2sr.total.device_seconds == 52.0 and w2sr.total.flops == 920_000.0
    assert w2sr.total.cpu_seconds == 46.0 and w2sr.total.tokens_generated == 1000
    # RL: 100 x 2 = 200 device-seconds; 2 x 300 x 5000 + 6 x 300 x 5000 = 12,000,000 FLOPs
    assert rl.total.stages == ["rl"] and rl.total.device_seconds == 200.0 and rl.total.flops == 12_000_000.0
    [ratio] = costs.ratios
    assert (ratio.w2sr, ratio.rl, ratio.complete) == ("w2sr", "rl", True)
    assert ratio.device_seconds == pytest.approx(52 / 200) and ratio.flops == pytest.approx(920_000 / 12_000_000)
    assert ratio.cpu_seconds == pytest.approx(46 / 150)
    report = json.loads(json.dumps(costs.to_report()))
    assert set(report) == {"cost", "cost_ratio"} and set(report["cost"]) == {"w2sr", "rl"}
    assert report["cost"]["w2sr"]["device_seconds"] == 52.0 and report["cost_ratio"][0]["flops"] == ratio.flops
    assert [r["source"] for r in report["cost"]["w2sr"]["records"]][-1] == str(root / "sft")
    text = cost_markdown(costs)
    assert "| 52.0 | 920 kFLOP |" in text and "device-seconds 0.26x, FLOPs 0.0767x" in text


def test_a_missing_record_is_named_and_the_ratio_flagged(files):
    root, card, summary = files
    summary.write_text(json.dumps({"cost": VER.to_dict()}))  # traces made without a card
    (root / "old").mkdir()  # a fit run from before cost.json
    costs = arm_costs([root / "sft", root / "rl", root / "old"], teacher=summary)
    assert costs.arms["w2sr"].missing == ["generate"] and costs.without_cost == [str(root / "old")]
    assert costs.ratios[0].complete is False
    assert "no record: generate" in cost_markdown(costs) and "without a cost.json" in cost_markdown(costs)
    # the card given on its own completes the arm
    assert arm_costs([root / "sft"], teacher=summary, cards=[card]).arms["w2sr"].complete


def test_several_fits_each_make_an_arm_with_the_whole_teacher_side(files):
    root, card, summary = files
    write(root / "sft_p" / "cost.json", SFT)
    costs = arm_costs([root / "sft", root / "sft_p", root / "rl"], teacher=summary)
    assert sorted(costs.arms) == ["rl", "w2sr:sft", "w2sr:sft_p"]
    assert all(a.total.device_seconds == 52.0 for a in costs.arms.values() if a.arm == "w2sr")
    assert [(r.w2sr, r.rl) for r in costs.ratios] == [("w2sr:sft", "rl"), ("w2sr:sft_p", "rl")]


def test_wrong_files_are_input_errors(files):
    root, card, summary = files
    with pytest.raises(InputError, match="expected a generation card"):
        arm_costs([root / "sft"], cards=[root / "rl" / "cost.json"])
    with pytest.raises(InputError, match="expected a fit's cost.json"):
        arm_costs([card])
    (root / "bad.json").write_text("{")
    with pytest.raises(InputError, match="verify summary"):
        arm_costs([], teacher=root / "bad.json")


def test_the_arm_arithmetic_imports_no_torch():
    code = "import sys, w2sr.evaluation.cost; print(any(m.split('.')[0] == 'torch' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
