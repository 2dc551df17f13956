"""The toy weak-to-strong study (examples/toy_w2s): its task, and its whole pipeline shrunken (the wiring, not the
science). The end-to-end test runs ``run.py --smoke`` for one seed: every stage through the w2sr CLI, then checks the
files, their schemas, the report and the aggregated summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "examples" / "toy_w2s"
sys.path.insert(0, str(STUDY))

import aggregate  # noqa: E402
import task  # noqa: E402


def test_gold_solution_adds_column_by_column_with_carries() -> None:
    assert task.solution(4729, 3856) == (
        "9+6+0=15, carry 1.\n2+5+1=8, carry 0.\n7+8+0=15, carry 1.\n4+3+1=8, carry 0.\nThe answer is \\boxed{8585}."
    )
    assert task.solution(95, 17).splitlines()[-1] == "The answer is \\boxed{112}."  # final carry


def test_problems_are_disjoint_across_splits_and_sized() -> None:
    test = task.make_problems(60, task.TEST_SEED, "test", (3, 4), "test")
    groups = [test, *(task.make_problems(60, 1, split, (3, 4), split) for split in ("pool", "teacher", "prior"))]
    texts = [{p.problem for p in group} for group in groups]
    assert all(len(t) == 60 for t in texts)
    assert all(not (texts[i] & texts[j]) for i in range(4) for j in range(i + 1, 4))
    for p in groups[1]:
        a, b = task.operands(p)
        assert len(str(a)) == len(str(b)) == p.extras["digits"] in (3, 4)
        assert p.answer == str(a + b) and p.source == task.SOURCE
    assert [p.problem for p in task.make_problems(5, 1, "pool", (3, 4), "pool")] == [p.problem for p in groups[1][:5]]


def test_prior_shows_the_steps_on_a_share_of_its_problems(tmp_path: Path) -> None:
    sizes = task.TaskSizes(n_test=4, n_pool=4, n_teacher=4, n_prior=40, prior_steps_share=0.3)
    manifest = task.write_prior_data(tmp_path / "data", seed=2, sizes=sizes)
    assert manifest["files"] == {"test": 4, "gold_prior": 40, "gold_prior_answers": 40}
    seed = task.write_seed_data(tmp_path / "seed", seed=2, sizes=sizes)
    assert seed["files"] == {"test": 4, "pool": 4, "gold_teacher": 4, "gold_reference": 4}
    # one tokenizer for both sides: the teacher's traces are read by the student's tokenizer
    assert (tmp_path / "data" / "student-init" / "tokenizer.json").read_bytes() == (
        tmp_path / "seed" / "teacher-init" / "tokenizer.json"
    ).read_bytes()
    assert (tmp_path / "data" / "test.jsonl").read_text() == (tmp_path / "seed" / "test.jsonl").read_text()
    prior = [json.loads(line) for line in (tmp_path / "data" / "gold_prior.jsonl").read_text().splitlines()]
    answers = [json.loads(line) for line in (tmp_path / "data" / "gold_prior_answers.jsonl").read_text().splitlines()]
    assert [r["problem"] for r in prior] == [r["problem"] for r in answers]
    full = [r for r in prior if "carry" in r["completion"]]
    assert len(full) == 12 and all(
        r["completion"] == task.solution(*task.operands(task.Problem(id="x", problem=r["problem"], answer=r["answer"])))
        for r in full
    )
    for r in [*answers, *(r for r in prior if r not in full)]:
        assert r["completion"] == f"The answer is \\boxed{{{r['answer']}}}."
    pool = {json.loads(line)["problem"] for line in (tmp_path / "seed" / "pool.jsonl").read_text().splitlines()}
    assert all(task.split_of(r["problem"]) == "prior" for r in prior) and not pool & {r["problem"] for r in prior}


def test_spread_skips_undefined_values() -> None:
    stats = aggregate.spread([0.1, 0.3, None])
    assert stats["mean"] == pytest.approx(0.2) and stats["std"] == pytest.approx(0.1414, abs=1e-4)
    assert stats["per_seed"] == [0.1, 0.3, None]


def test_sign_test_is_exact_and_two_sided() -> None:
    assert aggregate.sign_test(0, 0) == 1.0
    assert aggregate.sign_test(5, 0) == pytest.approx(2 / 32)  # all 5 discordant pairs one way
    assert aggregate.sign_test(0, 5) == aggregate.sign_test(5, 0)
    assert aggregate.sign_test(3, 2) == 1.0
    assert aggregate.sign_test(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)


def test_paired_counts_fixes_breaks_and_copied_slips() -> None:
    teacher = {
        "a": {"correct": True, "prediction": "1"},
        "b": {"correct": False, "prediction": "7"},
        "c": {"correct": False, "prediction": "8"},
        "d": {"correct": False, "prediction": None},
    }
    model = {
        "a": {"correct": False, "prediction": "2"},
        "b": {"correct": False, "prediction": "7"},
        "c": {"correct": True, "prediction": "9"},
        "d": {"correct": False, "prediction": None},
    }
    test = aggregate.paired(model, teacher, Path("x"))
    assert (test["fixes"], test["breaks"], test["wrong"], test["copied_slips"]) == (1, 1, 3, 1)
    assert test["copied_share"] == pytest.approx(1 / 3) and test["sign_test_p"] == 1.0


def test_latent_skill_scores_step_by_step_and_answer_only_samples_apart(tmp_path: Path) -> None:
    def sample(completion: str, correct: bool) -> str:
        return json.dumps({"completion": completion, "correct": correct}) + "\n"

    steps, answer = "9+6+0=15, carry 1.\nThe answer is \\boxed{15}.", "The answer is \\boxed{15}."
    path = tmp_path / "rl_verified.jsonl"
    path.write_text(
        sample(steps, True)
        + sample(steps, False)
        + sample(steps, True)
        + sample(answer, True)
        + sample(answer, False)
        + sample(answer, False)
        + sample(answer, False)
        + sample(answer, False)
    )
    skill = aggregate.latent_skill(path)
    assert (skill["samples"], skill["step_by_step"], skill["step_by_step_correct"], skill["answer_only_correct"]) == (
        8,
        3,
        2,
        1,
    )
    assert skill["step_by_step_share"] == pytest.approx(3 / 8)
    # the share of step-by-step samples that are right (not of all samples: 2 / 8, nor all correct ones: 3 / 8)
    assert skill["step_by_step_accuracy"] == pytest.approx(2 / 3)
    assert skill["answer_only_accuracy"] == pytest.approx(1 / 5)
    assert aggregate.latent_skill(tmp_path / "missing.jsonl") is None


SMOKE_MODELS = {
    "teacher": "teacher",
    "student-before": "student-prior",
    "w2sr": "w2sr",
    "w2sr-p": "w2sr-p",
    "w2sr-n": "w2sr-n",
    "gold": "gold",
    "rl": "rl",
    "control-before": "control-prior",
    "control-w2sr": "control-w2sr",
    "control-w2sr-p": "control-w2sr-p",
    "w2sr-50steps": "w2sr-50steps",
    "w2sr-300steps": "w2sr-300steps",
}
SPLIT_OF = {
    "w2sr-p": "splits/w2sr_p.jsonl",
    "w2sr-n": "splits/w2sr_n.jsonl",
    "rl": "rl_splits/w2sr_p.jsonl",
    "control-w2sr-p": "splits/w2sr_p.jsonl",
}


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~31 CLI starts, ~300 CPU s (estimate); far slower on a loaded shared machine
def test_smoke_study_runs_every_stage_through_the_cli(tmp_path: Path) -> None:
    out, results = tmp_path / "study", tmp_path / "results"
    command = [
        sys.executable,
        str(STUDY / "run.py"),
        "--output",
        str(out),
        "--seeds",
        "3",
        "--jobs",
        "2",
        "--smoke",
        "--results",
        str(results),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seed, prior = out / "seed3", out / "prior"
    # the data: problems and gold traces in the trace schema; the prior's problems are other problems, made once
    manifest = json.loads((seed / "data" / "manifest.json").read_text())
    assert manifest["files"] == {"test": 8, "pool": 8, "gold_teacher": 32, "gold_reference": 8}
    manifest = json.loads((prior / "data" / "manifest.json").read_text())
    assert manifest["files"] == {"test": 8, "gold_prior": 32, "gold_prior_answers": 32}
    gold = json.loads((seed / "data" / "gold_teacher.jsonl").read_text().splitlines()[0])
    assert gold["teacher"] == "gold" and gold["prompt"] == [{"role": "user", "content": gold["problem"]}]
    assert gold["completion"].endswith(f"\\boxed{{{gold['answer']}}}.")
    # the teacher's traces: one greedy solution per pool problem, verified with the paper grader and split
    traces = [json.loads(line) for line in (seed / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 8 and {t["sample"] for t in traces} == {0}
    assert all(t["teacher"].endswith("models/teacher") for t in traces)
    summary = json.loads((seed / "verify_summary.json").read_text())
    assert summary["grader"] == "paper"
    sizes = {name: _lines(seed / "splits" / f"{name}.jsonl") for name in ("w2sr", "w2sr_p", "w2sr_n")}
    assert sizes["w2sr"] == 8 and sizes["w2sr_p"] + sizes["w2sr_n"] == 8
    assert summary["variants"] == {"W2SR": 8, "W2SR-P": sizes["w2sr_p"], "W2SR-N": sizes["w2sr_n"]}
    # the RL-like reference's data: n samples per pool problem from the (shared) prior, verified the same way
    n = yaml.safe_load((STUDY / "configs" / "generate_rl.yaml").read_text())["sampling"]["n"]
    rl_traces = [json.loads(line) for line in (seed / "rl_traces.jsonl").read_text().splitlines()]
    assert n > 1 and len(rl_traces) == 8 * n
    assert all(t["teacher"].endswith("prior/models/student-prior") for t in rl_traces)
    assert json.loads((seed / "rl_verify_summary.json").read_text())["records"] == 8 * n
    # every model was fine-tuned through the CLI and evaluated on the same held-out problems; a run whose training
    # file is empty (an untrained smoke teacher gets nothing right) is skipped and said so, not failed
    empty = {run for run, split in SPLIT_OF.items() if _lines(seed / split) == 0}
    for run in empty:
        assert f"seed3/fit-{run}: skipped, no traces in" in done.stdout
    test_problems = {json.loads(line)["problem"] for line in (seed / "data" / "test.jsonl").read_text().splitlines()}
    for run, model in SMOKE_MODELS.items():
        where = prior if run in aggregate.PRIOR_RUNS else seed
        assert (where / "models" / model / "config.json").is_file() == (run not in empty), run
        assert (where / "eval" / run / "results.json").is_file() == (run not in empty), run
        if run in empty:
            continue
        results_json = json.loads((where / "eval" / run / "results.json").read_text())
        assert results_json["grader"] == "paper" and 0.0 <= aggregate.accuracy(results_json, Path(run)) <= 1.0
        predictions = (where / "eval" / run / "predictions.jsonl").read_text().splitlines()
        assert {json.loads(line)["problem"] for line in predictions} == test_problems
    steps = {
        run: json.loads((seed / "models" / run / "w2sr_student.json").read_text())["global_step"]
        for run in ("w2sr-50steps", "w2sr", "w2sr-300steps")
    }
    assert steps == {"w2sr-50steps": 1, "w2sr": 2, "w2sr-300steps": 3}  # the smoke sweep's budgets
    # the reports (base and both references) and the summary over seeds
    for folder in ("report", "report-rl") if "rl" not in empty else ("report",):
        for name in ("report.md", "report.json", "report.png"):
            assert (seed / folder / name).stat().st_size > 0, (folder, name)
        report = json.loads((seed / folder / "report.json").read_text())
        assert report["base"] == "student-before" and report["reference"] == {"report": "gold"}.get(folder, "rl")
    study = json.loads((out / "summary.json").read_text())
    assert study["seeds"] == ["seed3"] and set(study["accuracy"]) == set(aggregate.RUNS)
    for run in aggregate.RUNS:
        assert (study["accuracy"][run]["per_seed"][0] is None) == (run in empty), run
    for run in set(aggregate.RUNS[1:]) - empty:
        test = study["paired_vs_teacher"][run]["pooled"]
        assert set(test) >= {"fixes", "breaks", "sign_test_p", "copied_share"} and 0 <= test["sign_test_p"] <= 1
    assert [r["steps"] for r in study["sweep"]["runs"].values()] == [1, 2, 3]
    skill = study["latent_skill"]["per_seed"][0]
    assert skill["samples"] == 8 * n and 0 <= skill["step_by_step"] <= skill["samples"]
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| W2SR-P |" in (out / "summary.md").read_text()
    timing = json.loads((out / "timing.json").read_text())
    ran = set(timing["steps"])
    assert ran == {line.split(": ")[0].split("] ")[-1] for line in done.stdout.splitlines() if ": ok in " in line}
    assert {
        f"prior/{kind}"
        for kind in (
            "data",
            "fit-student-prior",
            "fit-control-prior",
            "evaluate-student-before",
            "evaluate-control-before",
        )
    } <= ran
    assert {
        f"seed3/{kind}"
        for kind in (
            "data",
            "fit-teacher",
            "generate",
            "verify",
            "generate-rl",
            "verify-rl",
            "fit-w2sr",
            "fit-gold",
            "fit-control-w2sr",
            "evaluate-teacher",
            "report",
        )
    } <= ran
    assert timing["cpu_s_total"] > 0 and timing["two_idle_cores_at_least_s"] >= timing["cpu_s_total"] / 2 - 0.1
    assert timing["invocations"][-1]["load_average_1min"]["samples"] and set(timing["stages"]) >= {
        "prior-data",
        "fit-student-prior",
        "fit-teacher",
        "generate",
        "verify",
        "fit-student-runs",
        "evaluate",
        "report",
    }
    assert {p.name for p in results.iterdir()} >= {"summary.json", "summary.md", "summary.png", "timing.json", "seed3"}
    assert (results / "seed3" / "report.json").is_file() and (results / "seed3" / "verify_summary.json").is_file()
    # a second run resumes: every step is skipped
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("done before, skipped") == len(ran), again.stdout
