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
import pilot_prior  # noqa: E402
import run as toy_run  # noqa: E402
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
    # the answer-only lines give the carry-less shortcut: right only where no column carries
    direct = [*answers, *(r for r in prior if r not in full)]
    for r in direct:
        a, b = task.operands(task.Problem(id="x", problem=r["problem"], answer=r["answer"]))
        assert r["completion"] == f"The answer is \\boxed{{{task.carryless_sum(a, b)}}}."
    assert any(
        str(task.carryless_sum(*task.operands(task.Problem(id="x", problem=r["problem"], answer=None)))) != r["answer"]
        for r in direct
    )
    pool = {json.loads(line)["problem"] for line in (tmp_path / "seed" / "pool.jsonl").read_text().splitlines()}
    assert all(task.split_of(r["problem"]) == "prior" for r in prior) and not pool & {r["problem"] for r in prior}


def test_carryless_shortcut_drops_every_carry_and_correct_answers_stay_available(tmp_path: Path) -> None:
    assert task.carryless_sum(4729, 3856) == 7575 and task.carryless_sum(8040, 6892) == 4832
    assert task.carryless_sum(204, 241) == 445 == 204 + 241  # no column carries: the shortcut is right
    assert task.shortcut_line(999, 111) == "The answer is \\boxed{0}."
    sizes = task.TaskSizes(n_test=4, n_pool=4, n_teacher=4, n_prior=20, prior_steps_share=0.0, prior_answers="correct")
    manifest = task.write_prior_data(tmp_path / "data", seed=3, sizes=sizes)
    assert manifest["task"]["prior_answers"] == "correct"
    for line in (tmp_path / "data" / "gold_prior.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["completion"] == f"The answer is \\boxed{{{r['answer']}}}."


def test_ready_steps_start_longest_chain_first_so_every_seeds_prior_starts_early(tmp_path: Path) -> None:
    steps = [*toy_run.seed_steps(tmp_path, 0), *toy_run.seed_steps(tmp_path, 1), *toy_run.group_steps(tmp_path, [0, 1])]
    paths = toy_run.critical_paths(steps)
    # seed 1's prior outranks seed 0's teacher and SFT runs, which list order would have started first
    assert paths["seed1/fit-student-prior"] > paths["seed0/fit-teacher"] > paths["seed0/fit-w2sr"]
    # a step's path is its weight plus the heaviest path waiting on it
    assert paths["seed0/data"] == toy_run.step_weight("seed0/data") + paths["seed0/fit-student-prior"]
    assert paths["study/report-grpo"] == toy_run.step_weight("study/report-grpo")


def test_prior_monitor_scores_step_by_step_and_direct_answers_apart(tmp_path: Path) -> None:
    greedy = [("The answer is \\boxed{7575}.", False), ("9+6+0=15, carry 1.\nThe answer is \\boxed{12}.", True)]
    sampled = [
        ("9+6+0=15, carry 1.\nThe answer is \\boxed{12}.", True),
        ("9+6+0=15, carry 1.\nThe answer is \\boxed{13}.", False),
        ("The answer is \\boxed{7575}.", False),
        ("The answer is \\boxed{445}.", True),
    ]
    result = pilot_prior.score(300, greedy, sampled)
    assert (result.greedy, result.greedy_step_share, result.sampled_step_share) == (0.5, 0.5, 0.5)
    assert (result.step_right, result.direct_right, result.sampled_right) == (0.5, 0.5, 0.5)
    assert pilot_prior.score(1, [], []).sampled_step_share == 0.0  # nothing to score is not a division by zero
    # on a real (random-init) student and real pool problems: generation and grading run, and the result is a share
    sizes = task.TaskSizes(n_test=2, n_pool=3, n_teacher=2, n_prior=4)
    task.write_data(tmp_path / "data", seed=5, sizes=sizes)
    from transformers import AutoModelForCausalLM

    from w2sr.training.loading import load_tokenizer

    init = tmp_path / "data" / "student-init"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(init), load_tokenizer(str(init))
    monitor = pilot_prior.PriorMonitor(str(tmp_path / "data" / "pool.jsonl"), str(tmp_path / "m.jsonl"), samples=2)
    measured = monitor.measure(model, tokenizer, step=10)
    assert measured.step == 10 and 0.0 <= measured.greedy <= 1.0 and 0.0 <= measured.sampled_right <= 1.0
    assert model.training is False  # from_pretrained gives eval mode; measure restores the mode it found


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


def _results(folder: Path, right: int, n: int = 10) -> str:
    """A results.json of ``w2sr evaluate`` on the toy benchmark: the first ``right`` of ``n`` problems correct."""
    folder.mkdir(parents=True, exist_ok=True)
    scores = [{"id": f"p{i}", "correct": [i < right]} for i in range(n)]
    acc = right / n
    results = {
        "model": folder.name,
        "grader": "paper",
        "benchmarks": {"toy-carry": {"problems": n, "samples_per_problem": 1, "avg@n": acc, "ci95": [acc, acc]}},
    }
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "predictions.jsonl").write_text(
        "".join(json.dumps({"id": s["id"], "problem": s["id"], "correct": s["correct"][0]}) + "\n" for s in scores)
    )
    return str(folder / "results.json")


def test_the_summary_reads_accuracy_and_rgr_from_the_reports_seed_groups(tmp_path: Path) -> None:
    """Two seeds: base 10% / 30%, W2SR 50% / 40%, GRPO 90% / 80%. Per seed RGR (50-10)/(90-10) = 0.5 and
    (40-30)/(80-30) = 0.2 (mean 0.35); the report's main RGR is the ratio of the mean gains, 0.25 / 0.65."""
    from w2sr.evaluation.report import make_report

    runs = {"student-before": [1, 3], "w2sr": [5, 4], "grpo": [9, 8]}
    specs = [f"{name}=[{','.join(_results(tmp_path / f's{i}' / name, r) for i, r in enumerate(rs))}]"
             for name, rs in runs.items()]  # fmt: skip
    report = make_report(specs, tmp_path / "r", base="student-before", reference="grpo")
    view = aggregate.accuracy_view(report, "w2sr")
    assert view["per_seed"] == pytest.approx([0.5, 0.4]) and view["mean"] == pytest.approx(0.45)
    assert view["sd"] == pytest.approx(0.0707, abs=1e-4) and view["ci95"] == report["benchmarks"]["toy-carry"][
        "w2sr"]["ci95"]  # fmt: skip
    rgr = aggregate.rgr_view(report, "w2sr")
    assert rgr["per_seed"] == pytest.approx([0.5, 0.2]) and rgr["mean"] == pytest.approx(0.35)
    assert rgr["rgr"] == pytest.approx(0.25 / 0.65) and rgr["ci95"] == report["rgr_ci95"]["w2sr"]["toy-carry"]
    assert aggregate.rgr_view(report, "grpo") is None and aggregate.accuracy_view(report, "gold") is None
    single = make_report([spec.replace("[", "").split(",")[0] for spec in specs], tmp_path / "one",
                         base="student-before", reference="grpo")  # fmt: skip
    assert aggregate.accuracy_view(single, "w2sr") == {"per_seed": [0.5], "mean": 0.5, "sd": None, "ci95": [0.5, 0.5]}
    assert aggregate.rgr_view(single, "w2sr")["per_seed"] == pytest.approx([0.5])


def test_the_w2sr_arm_with_the_teachers_fit_adds_its_cost_to_the_report_arm(tmp_path: Path) -> None:
    """The report's W2SR arm (teacher given) 10 CPU s / 1e9 FLOPs against GRPO's 40 / 8e9; the teacher's fit adds
    30 / 3e9: with it the ratios are 40 / 40 = 1.0 and 4e9 / 8e9 = 0.5 (the report's own: 0.25 and 0.125)."""

    def arm(kind: str, fit: str, cpu: float, flops: float) -> dict:
        totals = {"device_seconds": cpu, "cpu_seconds": cpu, "wall_seconds": cpu, "flops": flops}
        return {**totals, "arm": kind, "fit_run": str(tmp_path / "fits" / fit), "complete": True, "missing": []}

    report = {
        "cost": {"w2sr": arm("w2sr", "w2sr-p", 10.0, 1e9), "rl": arm("rl", "grpo", 40.0, 8e9)},
        "cost_ratio": [{"w2sr": "w2sr", "rl": "rl", "device_seconds": 0.25, "flops": 0.125, "cpu_seconds": 0.25}],
    }
    (tmp_path / "report-grpo").mkdir()
    (tmp_path / "report-grpo" / "report.json").write_text(json.dumps(report))
    assert aggregate.seed_cost(tmp_path)["variants"]["w2sr-p"].get("with_teacher_fit") is None  # no teacher record
    (tmp_path / "fits" / "teacher").mkdir(parents=True)
    teacher = {"stage": "fit", "device_seconds": 30.0, "cpu_seconds": 30.0, "wall_seconds": 30.0, "flops": 3e9}
    (tmp_path / "fits" / "teacher" / "cost.json").write_text(json.dumps({"cost": teacher}))
    cost = aggregate.seed_cost(tmp_path)
    entry = cost["variants"]["w2sr-p"]
    assert entry["ratio_teacher_given"]["flops"] == 0.125 and cost["rl"]["cpu_seconds"] == 40.0
    assert entry["with_teacher_fit"]["cpu_seconds"] == 40.0 and entry["with_teacher_fit"]["flops"] == 4e9
    assert entry["ratio_with_teacher_fit"]["cpu_seconds"] == pytest.approx(1.0)
    assert entry["ratio_with_teacher_fit"]["flops"] == pytest.approx(0.5)


SMOKE_MODELS = {
    "teacher": "teacher",
    "student-before": "student-prior",
    "w2sr": "w2sr",
    "w2sr-p": "w2sr-p",
    "w2sr-n": "w2sr-n",
    "gold": "gold",
    "rl": "rl",
    "grpo": "grpo",
    "control-before": "control-prior",
    "control-w2sr": "control-w2sr",
}
SPLIT_OF = {
    "w2sr-p": "splits/w2sr_p.jsonl",
    "w2sr-n": "splits/w2sr_n.jsonl",
    "rl": "rl_splits/w2sr_p.jsonl",
}


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


def _cost(path: Path) -> dict:
    return json.loads(path.read_text())["cost"]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 24 steps + aggregate: 224-266 CPU s, shared 2 cores (one-prior: 260)
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
    seed = out / "seed3"
    # the data, all of it per seed (the student's init and prior problems too): problems and gold traces in the
    # trace schema; the prior's problems are other problems
    manifest = json.loads((seed / "data" / "manifest.json").read_text())
    assert manifest["files"] == {
        "test": 8, "gold_prior": 32, "gold_prior_answers": 32, "pool": 8, "gold_teacher": 32, "gold_reference": 8
    }  # fmt: skip
    assert manifest["seed"] == 3 and manifest["part"] == "all"
    gold = json.loads((seed / "data" / "gold_teacher.jsonl").read_text().splitlines()[0])
    assert gold["teacher"] == "gold" and gold["prompt"] == [{"role": "user", "content": gold["problem"]}]
    assert gold["completion"].endswith(f"\\boxed{{{gold['answer']}}}.")
    # the teacher's traces: one greedy solution per pool problem, verified with the paper grader and split
    traces = [json.loads(line) for line in (seed / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 8 and {t["sample"] for t in traces} == {0}
    assert all(t["teacher"].endswith("seed3/models/teacher") for t in traces)
    summary = json.loads((seed / "verify_summary.json").read_text())
    assert summary["grader"] == "paper"
    sizes = {name: _lines(seed / "splits" / f"{name}.jsonl") for name in ("w2sr", "w2sr_p", "w2sr_n")}
    assert sizes["w2sr"] == 8 and sizes["w2sr_p"] + sizes["w2sr_n"] == 8
    assert summary["variants"] == {"W2SR": 8, "W2SR-P": sizes["w2sr_p"], "W2SR-N": sizes["w2sr_n"]}
    # the RL-like reference's data: n samples per pool problem from this seed's prior, verified the same way
    n = yaml.safe_load((STUDY / "configs" / "generate_rl.yaml").read_text())["sampling"]["n"]
    rl_traces = [json.loads(line) for line in (seed / "rl_traces.jsonl").read_text().splitlines()]
    assert n > 1 and len(rl_traces) == 8 * n
    assert all(t["teacher"].endswith("seed3/models/student-prior") for t in rl_traces)
    assert json.loads((seed / "rl_verify_summary.json").read_text())["records"] == 8 * n
    # GRPO through w2sr fit from this seed's prior, on the pool problems: its export, card and cost record
    card = json.loads((seed / "models" / "grpo" / "w2sr_student.json").read_text())
    assert card["method"] == "grpo" and card["global_step"] == 2
    assert card["rl"]["num_generations"] == yaml.safe_load((STUDY / "configs" / "fit_grpo.yaml").read_text())[
        "model"]["init_args"]["rl"]["num_generations"]  # fmt: skip
    grpo_cost = _cost(seed / "fits" / "grpo" / "cost.json")
    assert grpo_cost["stage"] == "rl" and grpo_cost["tokens_generated"] > 0 and grpo_cost["phases"]["rollout"] > 0
    # every model was fine-tuned through the CLI and evaluated on the same held-out problems; a run whose training
    # file is empty (an untrained smoke teacher gets nothing right) is skipped and said so, not failed
    empty = {run for run, split in SPLIT_OF.items() if _lines(seed / split) == 0}
    for run in empty:
        assert f"seed3/fit-{run}: skipped, no traces in" in done.stdout
    test_problems = {json.loads(line)["problem"] for line in (seed / "data" / "test.jsonl").read_text().splitlines()}
    for run, model in SMOKE_MODELS.items():
        assert (seed / "models" / model / "config.json").is_file() == (run not in empty), run
        assert (seed / "eval" / run / "results.json").is_file() == (run not in empty), run
        if run in empty:
            continue
        results_json = json.loads((seed / "eval" / run / "results.json").read_text())
        assert results_json["grader"] == "paper" and 0.0 <= results_json["benchmarks"]["toy-carry"]["avg@n"] <= 1.0
        predictions = (seed / "eval" / run / "predictions.jsonl").read_text().splitlines()
        assert {json.loads(line)["problem"] for line in predictions} == test_problems
        if run not in ("student-before", "control-before"):
            fit = _cost(seed / "fits" / model / "cost.json")  # every fit in its own folder, with its cost
            assert fit["stage"] == ("rl" if run == "grpo" else "fit"), run
    # the seed's report against GRPO, with the cost of each arm (the W2SR fits + the teacher's traces) and the ratio
    report = json.loads((seed / "report-grpo" / "report.json").read_text())
    assert report["base"] == "student-before" and report["reference"] == "grpo"
    w2sr_arms = {Path(arm["fit_run"]).name: arm for arm in report["cost"].values() if arm["arm"] == "w2sr"}
    assert set(w2sr_arms) == {"w2sr", "w2sr-p", "w2sr-n"} - empty
    [rl_arm] = [arm for arm in report["cost"].values() if arm["arm"] == "rl"]
    assert Path(rl_arm["fit_run"]).name == "grpo" and rl_arm["cpu_seconds"] == pytest.approx(grpo_cost["cpu_seconds"])
    assert w2sr_arms["w2sr"]["complete"] and w2sr_arms["w2sr"]["stages"] == ["generate", "verify", "fit"]
    assert len(report["cost_ratio"]) == len(w2sr_arms)
    # the reports over the seeds: one seed group per model, against each reference
    for reference in ("gold", "rl", "grpo"):
        folder = out / f"report-{reference}"
        if reference == "rl" and "rl" in empty:
            assert not folder.exists() and "study/report-rl: skipped, no traces in" in done.stdout
            continue
        for name in ("report.md", "report.json", "report.png"):
            assert (folder / name).stat().st_size > 0, (reference, name)
        report = json.loads((folder / "report.json").read_text())
        assert report["base"] == "student-before" and report["reference"] == reference
        assert {run["name"] for run in report["runs"]} == set(SMOKE_MODELS) - empty
    # the summary: the reports' numbers, the study's own statistics, the cost with and without the teacher's fit
    study = json.loads((out / "summary.json").read_text())
    assert study["seeds"] == ["seed3"] and set(study["accuracy"]) == set(aggregate.RUNS)
    gold_report = json.loads((out / "report-gold" / "report.json").read_text())
    for run in aggregate.RUNS:
        view = study["accuracy"][run]
        assert (view is None) == (run in empty), run
        if view is not None:
            assert view["per_seed"] == [gold_report["benchmarks"]["toy-carry"][run]["accuracy"]]
    for run in set(aggregate.RUNS[1:]) - empty:
        test = study["paired_vs_teacher"][run]["pooled"]
        assert set(test) >= {"fixes", "breaks", "sign_test_p", "copied_share"} and 0 <= test["sign_test_p"] <= 1
    skill = study["latent_skill"]["per_seed"][0]
    assert skill["samples"] == 8 * n and 0 <= skill["step_by_step"] <= skill["samples"]
    [cost] = study["cost"]["per_seed"]
    teacher_fit = _cost(seed / "fits" / "teacher" / "cost.json")
    given, trained = cost["variants"]["w2sr"]["teacher_given"], cost["variants"]["w2sr"]["with_teacher_fit"]
    assert given["cpu_seconds"] == pytest.approx(w2sr_arms["w2sr"]["cpu_seconds"])
    assert trained["cpu_seconds"] == pytest.approx(given["cpu_seconds"] + teacher_fit["cpu_seconds"])
    assert trained["flops"] == pytest.approx(given["flops"] + teacher_fit["flops"])
    assert cost["variants"]["w2sr"]["ratio_with_teacher_fit"]["flops"] == pytest.approx(
        trained["flops"] / grpo_cost["flops"]
    )
    assert study["grpo_rewards"][0]["steps"] == 2
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary_md = (out / "summary.md").read_text()
    assert "| W2SR-P |" in summary_md and "| GRPO (RL) |" in summary_md and "ratio FLOPs" in summary_md
    timing = json.loads((out / "timing.json").read_text())
    ran = set(timing["steps"])
    assert ran == {line.split(": ")[0].split("] ")[-1] for line in done.stdout.splitlines() if ": ok in " in line}
    assert {
        f"seed3/{kind}"
        for kind in (
            "data",
            "fit-student-prior",
            "fit-control-prior",
            "evaluate-student-before",
            "evaluate-control-before",
            "fit-teacher",
            "generate",
            "verify",
            "generate-rl",
            "verify-rl",
            "fit-w2sr",
            "fit-gold",
            "fit-control-w2sr",
            "fit-grpo",
            "evaluate-teacher",
            "evaluate-grpo",
            "report-grpo",
        )
    } | {"study/report-gold", "study/report-grpo"} <= ran
    assert timing["cpu_s_total"] > 0 and timing["two_idle_cores_at_least_s"] >= timing["cpu_s_total"] / 2 - 0.1
    assert timing["invocations"][-1]["load_average_1min"]["samples"] and set(timing["stages"]) >= {
        "data",
        "fit-student-prior",
        "fit-control-prior",
        "fit-teacher",
        "generate",
        "verify",
        "fit-student-runs",
        "fit-grpo",
        "evaluate",
        "report",
    }
    assert {p.name for p in results.iterdir()} >= {
        "summary.json", "summary.md", "summary.png", "timing.json", "report-gold.json", "report-grpo.md", "seed3"
    }  # fmt: skip
    assert {p.name for p in (results / "seed3").iterdir()} >= {"report-grpo.json", "verify_summary.json"}
    # a second run resumes: every step is skipped
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("done before, skipped") == len(ran), again.stdout


def test_an_rgr_defined_on_some_seeds_says_on_how_many() -> None:
    """A reference at or below the prior leaves that seed's RGR undefined: one defined seed is no spread (not
    "± 0.0"), and the count of defined seeds is shown."""
    assert aggregate._rgr_cell({"per_seed": [0.737, None, None], "mean": 0.737, "sd": 0.0}) == "73.7 (1 of 3 seeds)"
    two = {"per_seed": [0.5, None, 0.3], "mean": 0.4, "sd": 0.1414}
    assert aggregate._rgr_cell(two) == "40.0 ± 14.1 (2 of 3 seeds)"
    assert aggregate._rgr_cell({"per_seed": [0.5, 0.3], "mean": 0.4, "sd": 0.1414}) == "40.0 ± 14.1"
    assert aggregate._rgr_cell({"per_seed": [None], "mean": None, "sd": None}) == "undefined"
    assert aggregate._rgr_cell(None) == ""
