"""The toy weak-to-strong study (examples/toy_w2s): its task, and its whole pipeline shrunken (the wiring, not the
science). The end-to-end test runs ``run.py --smoke`` for one seed: every stage through the w2sr CLI, then checks the
files, their schemas, the report and the aggregated summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "examples" / "toy_w2s"
sys.path.insert(0, str(STUDY))

import aggregate  # noqa: E402
import task  # noqa: E402


def test_gold_solution_adds_column_by_column_with_carries() -> None:
    assert task.solution(4729, 3856) == ("9+6+0=15, carry 1.\n2+5+1=8, carry 0.\n7+8+0=15, carry 1.\n"
                                         "4+3+1=8, carry 0.\nThe answer is \\boxed{8585}.")
    assert task.solution(95, 17).splitlines()[-1] == "The answer is \\boxed{112}."  # final carry


def test_problems_are_disjoint_across_splits_and_sized() -> None:
    test = task.make_problems(60, task.TEST_SEED, "test", (3, 4), "test")
    pool = task.make_problems(60, 1, "pool", (3, 4), "pool")
    teacher = task.make_problems(60, 1, "teacher", (3, 4), "teacher")
    texts = [{p.problem for p in group} for group in (test, pool, teacher)]
    assert all(len(t) == 60 for t in texts)
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    for p in pool:
        a, b = task.operands(p)
        assert len(str(a)) == len(str(b)) == p.extras["digits"] in (3, 4)
        assert p.answer == str(a + b) and p.source == task.SOURCE
    assert [p.problem for p in task.make_problems(5, 1, "pool", (3, 4), "pool")] == [p.problem for p in pool[:5]]


def test_spread_skips_undefined_values() -> None:
    stats = aggregate.spread([0.1, 0.3, None])
    assert stats["mean"] == pytest.approx(0.2) and stats["std"] == pytest.approx(0.1414, abs=1e-4)
    assert stats["per_seed"] == [0.1, 0.3, None]


@pytest.mark.slow
def test_smoke_study_runs_every_stage_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "study"
    command = [sys.executable, str(STUDY / "run.py"), "--output", str(out), "--seeds", "3", "--jobs", "2", "--smoke"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seed = out / "seed3"
    # the data: problems and gold traces in the trace schema
    manifest = json.loads((seed / "data" / "manifest.json").read_text())
    assert manifest["files"] == {"test": 12, "pool": 12, "gold_teacher": 48, "gold_prior": 48, "gold_reference": 12}
    gold = json.loads((seed / "data" / "gold_prior.jsonl").read_text().splitlines()[0])
    assert gold["teacher"] == "gold" and gold["prompt"] == [{"role": "user", "content": gold["problem"]}]
    assert gold["completion"].endswith(f"\\boxed{{{gold['answer']}}}.")
    # the teacher's traces: several samples per pool problem, verified and split
    traces = [json.loads(line) for line in (seed / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 12 * 4 and {t["sample"] for t in traces} == {0, 1, 2, 3}
    assert all(t["teacher"].endswith("models/teacher") for t in traces)
    summary = json.loads((seed / "verify_summary.json").read_text())
    sizes = {name: sum(1 for _ in (seed / "splits" / f"{name}.jsonl").open()) if
             (seed / "splits" / f"{name}.jsonl").exists() else 0 for name in ("w2sr", "w2sr_p", "w2sr_n")}
    assert sizes["w2sr"] == 48 and sizes["w2sr_p"] + sizes["w2sr_n"] == 48
    assert summary["variants"] == {"W2SR": 48, "W2SR-P": sizes["w2sr_p"], "W2SR-N": sizes["w2sr_n"]}
    # every model was fine-tuned through the CLI and evaluated on the same held-out problems; a variant without
    # traces (an untrained smoke teacher gets nothing right) is skipped and said so, not failed
    empty = {run for run, split in (("w2sr-p", "w2sr_p"), ("w2sr-n", "w2sr_n")) if sizes[split] == 0}
    for run in empty:
        assert f"seed3/fit-{run}: skipped, no traces in" in done.stdout
    test_problems = {json.loads(line)["problem"] for line in (seed / "data" / "test.jsonl").read_text().splitlines()}
    for run, model in (("teacher", "teacher"), ("student-before", "student-prior"), ("w2sr", "student-w2sr"),
                       ("w2sr-p", "student-w2sr-p"), ("w2sr-n", "student-w2sr-n"), ("reference", "student-reference")):
        assert (seed / "models" / model / "config.json").is_file() == (run not in empty), run
        assert (seed / "eval" / run / "results.json").is_file() == (run not in empty), run
        if run in empty:
            continue
        results = json.loads((seed / "eval" / run / "results.json").read_text())
        assert 0.0 <= aggregate.accuracy(results, Path(run)) <= 1.0
        predictions = (seed / "eval" / run / "predictions.jsonl").read_text().splitlines()
        assert {json.loads(line)["problem"] for line in predictions} == test_problems
    # the report and the summary over seeds
    for name in ("report.md", "report.json", "report.png"):
        assert (seed / "report" / name).stat().st_size > 0, name
    report = json.loads((seed / "report" / "report.json").read_text())
    assert report["base"] == "student-before" and report["reference"] == "reference"
    assert set(report["rgr"]) == {"teacher", "w2sr", "w2sr-p", "w2sr-n"} - empty
    study = json.loads((out / "summary.json").read_text())
    assert study["seeds"] == ["seed3"] and set(study["accuracy"]) == set(aggregate.RUNS)
    assert set(study["rgr"]) == {"w2sr", "w2sr-p", "w2sr-n"}
    for run in aggregate.RUNS:
        accuracy = study["accuracy"][run]["per_seed"][0]
        assert (accuracy is None) == (run in empty)
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| W2SR-P |" in (out / "summary.md").read_text()
    # a second run resumes: every step is skipped
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("done before, skipped") == 16 - 2 * len(empty), again.stdout
