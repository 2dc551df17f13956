"""w2sr report's comparisons (w2sr/evaluation/compare.py): macro rows over the benchmarks every run shares, refused or
flagged setting mismatches, paired intervals of gains and RGR, "undefined" RGR, each against hand-computed values.

Run: ``pytest tests/evaluation/test_report_compare.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from w2sr.evaluation.compare import paired_replicates
from w2sr.evaluation.report import main, make_report, parse_run
from w2sr.records.jsonl import InputError

SAMPLING = {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 4096, "seed": 0, "batch_size": 16}
PROMPT = {"template": "qwen-base", "system": None, "user": None, "use_chat_template": True}


def _results(
    folder,
    correct: dict[str, list[int]],
    model="m",
    grader="paper",
    sampling=None,
    prompt=None,
    seed=0,
    ids: dict[str, list[str]] | None = None,
    quantization: str | None = "none",
):
    """A results.json of ``w2sr evaluate`` with one sample per problem: ``{benchmark: [0/1 per problem]}``."""
    folder.mkdir(parents=True, exist_ok=True)
    benchmarks = {}
    for name, values in correct.items():
        pids = (ids or {}).get(name) or [f"{name}-{i}" for i in range(len(values))]
        acc = float(np.mean(values))
        benchmarks[name] = {
            "problems": len(values),
            "samples_per_problem": 1,
            "avg@n": acc,
            "pass@k": {"1": acc},
            "maj@k": {"1": acc},
            "ci95": [acc, acc],
            "no_answer": 0,
            "truncated": 0,
            "unscored": 0,
            "sampling": sampling or SAMPLING,
            "problem_scores": {
                "ids": pids,
                "avg@n": [float(v) for v in values],
                "pass@k": {"1": [float(v) for v in values]},
                "maj@k": {"1": [float(v) for v in values]},
            },
        }
    results = {
        "model": model,
        "adapter": None,
        "quantization": quantization,
        "grader": grader,
        "sampling": sampling or SAMPLING,
        "prompt": prompt or PROMPT,
        "seed": seed,
        "benchmarks": benchmarks,
        "macro": {},
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder / "results.json"


def _ones(n: int, right: int) -> list[int]:
    return [1] * right + [0] * (n - right)


def test_issue_example_macro_over_shared_benchmarks(tmp_path, capsys):
    """Base on {math500, aime24, amc23}, student on {math500, amc23}, RL on all three: per-benchmark RGR 0.5 on both
    shared benchmarks. Subtracting each run's own macro gave (0.5 - 0.3) / (0.4333 - 0.3) = 1.5; over the shared
    benchmarks the macro is (0.5 - 0.4) / (0.6 - 0.4) = 0.5 and aime24 is named as left out."""
    base = _results(tmp_path / "base", {"math500": _ones(100, 40), "aime24": _ones(30, 3), "amc23": _ones(40, 16)})
    student = _results(tmp_path / "student", {"math500": _ones(100, 50), "amc23": _ones(40, 20)})
    rl = _results(tmp_path / "rl", {"math500": _ones(100, 60), "aime24": _ones(30, 3), "amc23": _ones(40, 24)})
    report = make_report([str(base), str(student), str(rl)], tmp_path / "r", base="base", reference="rl")
    assert report["rgr"]["student"]["math500"] == pytest.approx(0.5)
    assert report["rgr"]["student"]["amc23"] == pytest.approx(0.5)
    assert report["rgr"]["student"]["macro"] == pytest.approx(0.5)  # not 1.5
    assert report["macro_benchmarks"] == ["math500", "amc23"]
    assert report["macro_left_out"] == {"aime24": ["student"]}
    assert report["benchmarks"]["macro"]["base"]["accuracy"] == pytest.approx(0.4)  # (0.4 + 0.4) / 2, not 0.3
    assert report["benchmarks"]["macro"]["student"]["gain"] == pytest.approx(0.1)
    assert report["rgr"]["student"]["aime24"] is None  # the student has no aime24 row
    md = (tmp_path / "r" / "report.md").read_text()
    assert "left out: aime24 (not in student)" in md
    assert json.loads((tmp_path / "r" / "report.json").read_text())["macro_left_out"] == {"aime24": ["student"]}
    assert "left out: aime24" in capsys.readouterr().out


def test_macro_is_mean_of_benchmarks_not_pooled_and_rgr_is_ratio_of_macro_gains(tmp_path):
    """Unequal sizes: 10 problems at 50% and 40 at 100% -> macro 75%, not the pooled 90%. Macro RGR is the ratio of
    the macro gains (0.4 / 0.6), not the mean of the per-benchmark RGRs ((0.5 + 0.75) / 2)."""
    base = _results(tmp_path / "base", {"a": _ones(10, 5), "b": _ones(40, 40)})
    assert make_report([str(base)], tmp_path / "r0")["benchmarks"]["macro"]["base"]["accuracy"] == pytest.approx(0.75)
    base = _results(tmp_path / "base", {"a": _ones(100, 20), "b": _ones(100, 20)})
    run = _results(tmp_path / "run", {"a": _ones(100, 30), "b": _ones(100, 50)})  # gains 0.1, 0.3
    ref = _results(tmp_path / "ref", {"a": _ones(100, 40), "b": _ones(100, 60)})  # gains 0.2, 0.4
    report = make_report([str(base), str(run), str(ref)], tmp_path / "r1", base="base", reference="ref")
    assert report["rgr"]["run"]["a"] == pytest.approx(0.5) and report["rgr"]["run"]["b"] == pytest.approx(0.75)
    assert report["rgr"]["run"]["macro"] == pytest.approx(0.2 / 0.3)
    worse = _results(tmp_path / "worse", {"a": _ones(100, 10), "b": _ones(100, 20)})  # below the base: negative
    report = make_report([str(base), str(worse), str(ref)], tmp_path / "r2", base="base", reference="ref")
    assert report["rgr"]["worse"]["a"] == pytest.approx(-0.5)
    assert report["benchmarks"]["a"]["worse"]["gain"] == pytest.approx(-0.1)


def test_paired_gain_interval_uses_one_resample_for_both_runs(tmp_path):
    """The student answers the base's 50 problems and 5 more: every per-problem difference is 0 or +1, so the paired
    interval of the +5-point gain excludes zero (about 5 +- 1.96 * sqrt(.05 * .95 / 100) = [0.7, 9.3]); two
    independent resamples would give about 5 +- 13.8 points, around zero."""
    base = _results(tmp_path / "base", {"x": _ones(100, 50)})
    student = _results(tmp_path / "student", {"x": _ones(100, 55)})
    report = make_report([str(base), str(student)], tmp_path / "r", base="base")
    lo, hi = report["benchmarks"]["x"]["student"]["gain_ci95"]
    assert 0 < lo < 0.05 < hi < 0.11
    assert hi - lo == pytest.approx(2 * 1.96 * (0.05 * 0.95 / 100) ** 0.5, rel=0.25)
    reps, problems = paired_replicates(
        [parse_run(str(base)), parse_run(str(student))], "x", "avg@n", seed=0, resamples=500
    )
    assert problems == 100 and np.all(reps["student"] - reps["base"] >= 0)  # the same problems in both
    assert "(+5.0 [+" in (tmp_path / "r" / "report.md").read_text()


def test_rgr_undefined_when_the_reference_gain_interval_contains_zero(tmp_path):
    """The reference gains 3 points (more than min_gap) but wins 13 problems and loses 10: the paired interval of its
    gain contains zero, so RGR is undefined (null + reason), not a ratio of noise."""
    base = _results(tmp_path / "base", {"x": [1] * 40 + [0] * 60})
    student = _results(tmp_path / "student", {"x": [1] * 42 + [0] * 58})
    ref = _results(tmp_path / "ref", {"x": [1] * 30 + [0] * 10 + [1] * 13 + [0] * 47})
    assert np.mean([1] * 30 + [0] * 10 + [1] * 13 + [0] * 47) == pytest.approx(0.43)
    report = make_report([str(base), str(student), str(ref)], tmp_path / "r", base="base", reference="ref")
    lo, hi = report["benchmarks"]["x"]["ref"]["gain_ci95"]
    assert lo < 0 < hi
    assert report["rgr"]["student"]["x"] is None
    assert "contains zero" in report["rgr_notes"]["student"]["x"]
    on_disk = json.loads((tmp_path / "r" / "report.json").read_text())
    assert on_disk["rgr"]["student"]["x"] is None and "undefined" in on_disk["rgr_notes"]["student"]["x"]
    assert "| student | undefined |" in (tmp_path / "r" / "report.md").read_text()
    # a clear reference gain: RGR defined, with its paired interval around the point value
    ref = _results(tmp_path / "ref2", {"x": _ones(100, 60)})
    report = make_report([str(base), str(student), str(ref)], tmp_path / "r2", base="base", reference="ref2")
    assert report["rgr"]["student"]["x"] == pytest.approx(0.1)
    lo, hi = report["rgr_ci95"]["student"]["x"]
    assert lo <= 0.1 <= hi


@pytest.mark.parametrize(
    "change,field",
    [
        ({"grader": "default"}, "grader"),
        ({"prompt": {**PROMPT, "template": "simple"}}, "prompt"),
        ({"sampling": {**SAMPLING, "temperature": 0.6}}, "sampling"),
        ({"ids": {"x": [f"x-{i}" for i in range(1, 11)]}}, "problem_ids"),
        ({"quantization": "nf4"}, "quantization"),
    ],
)
def test_runs_evaluated_differently_are_refused_or_flagged(tmp_path, capsys, change, field):
    a = _results(tmp_path / "a", {"x": _ones(10, 2)})
    b = _results(tmp_path / "b", {"x": _ones(10, 5)}, **change)
    with pytest.raises(InputError, match=f"{field}.*--allow_mismatch true"):
        make_report([str(a), str(b)], tmp_path / "r", base="a")
    with pytest.raises(SystemExit) as err:
        main(["--runs", str(a), str(b), "--base", "a", "--output_dir", str(tmp_path / "r")])
    assert err.value.code == 2 and field in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.json").exists()
    report = make_report([str(a), str(b)], tmp_path / "r", base="a", allow_mismatch=True)
    assert report["allow_mismatch"] is True and [m["field"] for m in report["mismatches"]] == [field]
    assert json.loads((tmp_path / "r" / "report.json").read_text())["mismatches"][0]["field"] == field
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.splitlines()[2].startswith("> **WARNING: these runs were NOT evaluated alike") and field in md
    assert "NOT evaluated alike" in capsys.readouterr().out


def test_sampling_seed_batch_size_and_unrecorded_settings_are_not_mismatches(tmp_path):
    a = _results(tmp_path / "a", {"x": _ones(10, 2)})
    b = _results(tmp_path / "b", {"x": _ones(10, 5)}, sampling={**SAMPLING, "seed": 3, "batch_size": 64}, seed=3)
    assert make_report([str(a), str(b)], tmp_path / "r", base="a")["mismatches"] == []
    c = tmp_path / "c" / "results.json"  # score-only: no sampling, no prompt recorded
    data = json.loads(b.read_text())
    data.update(sampling=None, prompt=None)
    data["benchmarks"]["x"]["sampling"] = None
    c.parent.mkdir()
    c.write_text(json.dumps(data))
    report = make_report([str(a), str(c)], tmp_path / "r2", base="a")
    assert report["mismatches"] == [] and any("sampling on x: not recorded by c" == u for u in report["unchecked"])


def test_scores_from_predictions_beside_an_older_results_json(tmp_path):
    """A results.json without problem_scores: the per-problem scores come from predictions.jsonl beside it."""
    a = _results(tmp_path / "a", {"x": _ones(100, 50)})
    b = _results(tmp_path / "b", {"x": _ones(100, 55)})
    data = json.loads(b.read_text())
    del data["benchmarks"]["x"]["problem_scores"]
    b.write_text(json.dumps(data))
    report = make_report([str(a), str(b)], tmp_path / "r0", base="a")
    assert report["benchmarks"]["x"]["b"]["gain_ci95"] is None
    assert "b has no per-problem scores on x" in report["notes"][0]
    with (tmp_path / "b" / "predictions.jsonl").open("w") as handle:
        for i, ok in enumerate(_ones(100, 55)):
            handle.write(
                json.dumps(
                    {
                        "id": f"x-{i}",
                        "benchmark": "x",
                        "sample": 0,
                        "correct": bool(ok),
                        "answer_class": 0 if ok else None,
                    }
                )
                + "\n"
            )
    report = make_report([str(a), str(b)], tmp_path / "r1", base="a")
    assert report["notes"] == [] and report["benchmarks"]["x"]["b"]["gain_ci95"][0] > 0


def test_evaluate_writes_what_the_report_pairs_on(tmp_path):
    """Score-only ``w2sr evaluate`` -> results.json with problem_scores -> ``w2sr report``: the paired gain is
    exact on hand-made completions, and with the same ids and seed the report's macro interval of a run is the
    independent-benchmark interval results.json has."""
    from w2sr.evaluation.run import score_predictions
    from w2sr.verification.grade import VerifyOptions

    def predictions(name, right):
        path = tmp_path / f"{name}.jsonl"
        with path.open("w") as handle:
            for bench, n in (("a", 30), ("b", 30)):
                for i in range(n):
                    answer = "7" if i < right[bench] else "8"
                    handle.write(
                        json.dumps(
                            {
                                "id": f"{bench}{i}",
                                "benchmark": bench,
                                "answer": "7",
                                "completion": f"so \\boxed{{{answer}}}",
                            }
                        )
                        + "\n"
                    )
        return path

    out = {}
    for name, right in (("base", {"a": 10, "b": 12}), ("student", {"a": 16, "b": 15})):
        out[name] = tmp_path / name
        results = score_predictions([str(predictions(name, right))], out[name], verify=VerifyOptions(), seed=0)
        assert results["benchmarks"]["a"]["problem_scores"]["avg@n"][: right["a"] + 1] == [1.0] * right["a"] + [0.0]
    report = make_report([f"base={out['base']}", f"student={out['student']}"], tmp_path / "r", base="base")
    assert report["benchmarks"]["a"]["student"]["gain"] == pytest.approx(6 / 30)
    assert report["benchmarks"]["macro"]["student"]["gain"] == pytest.approx((6 / 30 + 3 / 30) / 2)
    assert report["benchmarks"]["a"]["student"]["gain_ci95"][0] > 0  # only wins: paired, above zero
    saved = json.loads((out["student"] / "results.json").read_text())
    assert report["benchmarks"]["macro"]["student"]["ci95"] == pytest.approx(saved["macro"]["ci95"])
    assert report["mismatches"] == [] and report["bootstrap"]["paired_problems"] == {"a": 30, "b": 30}


def test_a_student_on_its_nf4_base_against_bf16_runs_is_refused_then_flagged_loudly(tmp_path, capsys):
    """Issue 26: a QLoRA student evaluated on its NF4 base beside a base and an RL run evaluated in bf16 was compared
    without a word. Refused (exit 2) without --allow_mismatch; with it, the warning says what the difference does."""
    base = _results(tmp_path / "base", {"x": _ones(100, 40)})
    student = _results(tmp_path / "student", {"x": _ones(100, 55)}, quantization="nf4")
    rl = _results(tmp_path / "rl", {"x": _ones(100, 60)})
    args = ["--runs", str(base), str(student), str(rl), "--base", "base", "--reference", "rl"]
    with pytest.raises(SystemExit) as err:
        main([*args, "--output_dir", str(tmp_path / "r")])
    assert err.value.code == 2 and "quantization (base: none; student: nf4; rl: none)" in capsys.readouterr().err
    main([*args, "--output_dir", str(tmp_path / "r"), "--allow_mismatch", "true"])
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["mismatches"] == [
        {"field": "quantization", "benchmark": None, "values": {"base": "none", "student": "nf4", "rl": "none"}}
    ]
    warning = (tmp_path / "r" / "report.md").read_text().splitlines()[2]
    assert warning.startswith("> **WARNING: these runs were NOT evaluated alike")
    assert "student: nf4" in warning and "not the training" in warning
    assert "student: nf4" in capsys.readouterr().out
    score_only = _results(tmp_path / "scores", {"x": _ones(100, 50)}, quantization=None)  # not recorded: unchecked
    report = make_report([str(base), str(score_only)], tmp_path / "r2", base="base")
    assert report["mismatches"] == [] and "quantization: not recorded by scores" in report["unchecked"]
