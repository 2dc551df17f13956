"""Report: per-benchmark accuracies, gains over the base, RGR (and when it is n/a), report.md/json/png, errors."""

from __future__ import annotations

import json

import pytest

from w2sr.evaluation.report import build_report, main, make_report, parse_run, read_fit_metrics, rgr


def _results(folder, model, scores, adapter=None):
    """A results.json with ``{benchmark: avg@n}``; intervals +-5 points."""
    folder.mkdir(parents=True, exist_ok=True)
    benchmarks = {
        name: {
            "problems": 100,
            "samples_per_problem": 1,
            "avg@n": acc,
            "pass@k": {"1": acc},
            "maj@k": {"1": acc},
            "ci95": [max(0, acc - 0.05), min(1, acc + 0.05)],
            "no_answer": 0,
            "truncated": 0,
            "unscored": 0,
        }
        for name, acc in scores.items()
    }
    macro = {"avg@n": sum(scores.values()) / len(scores), "pass@k": {}, "maj@k": {}, "ci95": None}
    (folder / "results.json").write_text(
        json.dumps({"model": model, "adapter": adapter, "grader": "paper", "benchmarks": benchmarks, "macro": macro})
    )
    return folder / "results.json"


def test_rgr_values_and_small_gap():
    assert rgr(0.6, 0.4, 0.8)[0] == pytest.approx(0.5)
    assert rgr(0.9, 0.4, 0.8)[0] == pytest.approx(1.25)  # beyond the reference
    assert rgr(0.3, 0.4, 0.8)[0] == pytest.approx(-0.25)  # worse than the base
    value, why = rgr(0.5, 0.40, 0.41)  # reference gains exactly 1 point: undefined
    assert value is None and "+1.0 points" in why
    assert rgr(0.5, 0.40, 0.30)[0] is None  # reference below the base


def test_report_files(tmp_path, capsys):
    base = _results(tmp_path / "eval-base", "Qwen/Qwen2.5-Math-7B", {"math500": 0.50, "aime24": 0.10})
    student = _results(
        tmp_path / "eval-w2sr", "Qwen/Qwen2.5-Math-7B", {"math500": 0.68, "aime24": 0.105}, adapter="runs/export"
    )
    ref = _results(tmp_path / "eval-rl", "SimpleRL-Zoo-7B", {"math500": 0.70, "aime24": 0.105})
    out = tmp_path / "report"
    report = make_report([str(base), f"w2sr={student}", str(ref)], out, base="eval-base", reference=str(ref))
    assert [r["name"] for r in report["runs"]] == ["eval-base", "w2sr", "eval-rl"]
    assert report["base"] == "eval-base" and report["reference"] == "eval-rl"
    assert report["rgr"]["w2sr"]["math500"] == pytest.approx(0.9)  # (68 - 50) / (70 - 50)
    assert report["rgr"]["w2sr"]["aime24"] is None  # the reference gained only 0.5 points
    assert "0.5 points" in report["rgr_notes"]["w2sr"]["aime24"]
    assert report["benchmarks"]["math500"]["w2sr"]["gain"] == pytest.approx(0.18)
    assert report["benchmarks"]["macro"]["eval-rl"]["accuracy"] == pytest.approx(0.4025)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["rgr"]["w2sr"]["math500"] == pytest.approx(0.9)
    md = (out / "report.md").read_text()
    assert "| math500 | 50.0 [45.0, 55.0] | 68.0 [63.0, 73.0] (+18.0) | 70.0 [65.0, 75.0] (+20.0) |" in md
    assert "| w2sr | 90% | undefined |" in md and "RGR on aime24: undefined" in md
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # never replaced without --overwrite
    with pytest.raises(Exception, match="exists"):
        make_report([str(base)], out)


def test_labels_from_folder_model_and_name(tmp_path):
    a = _results(tmp_path / "run-a", "m", {"x": 0.1})
    assert parse_run(str(a)).name == "run-a"
    assert parse_run(f"mine={a}").name == "mine"
    assert parse_run(str(a.parent)).name == "run-a"  # the folder works too
    with pytest.raises(Exception, match="share a name"):
        build_report([parse_run(str(a)), parse_run(str(a))], None, None)


def test_fit_curves_are_plotted(tmp_path):
    base = _results(tmp_path / "before", "tiny", {"toy": 0.0})
    after = _results(tmp_path / "after", "tiny", {"toy": 0.9})
    log = tmp_path / "fit" / "version_0"
    log.mkdir(parents=True)
    (log / "metrics.csv").write_text(
        "epoch,step,train/loss,val/reasoning_acc\n0,0,,0.0\n0,19,2.5,\n0,39,1.2,\n0,39,,0.5\n0,59,0.6,\n0,59,,0.8\n"
    )
    curves = read_fit_metrics(tmp_path / "fit")
    assert curves["val/reasoning_acc"] == [(0, 0.0), (39, 0.5), (59, 0.8)]
    assert curves["train/loss"] == [(19, 2.5), (39, 1.2), (59, 0.6)]
    report = make_report([str(base), str(after)], tmp_path / "r", base="before", fit_runs=[str(tmp_path / "fit")])
    assert report["fit_runs"]["fit"]["train/loss"][0] == [19, 2.5]
    assert report["rgr"] == {}
    assert "no --reference" in (tmp_path / "r" / "report.md").read_text()


def test_module_alias_and_bad_files_exit_2(tmp_path, capsys):
    good = _results(tmp_path / "g", "m", {"x": 0.1})
    main(["--runs", str(good), "--output_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "report.png").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "x", "overall": {}}))
    with pytest.raises(SystemExit) as err:
        main(["--runs", str(bad), "--output_dir", str(tmp_path / "o2")])
    assert err.value.code == 2 and "benchmarks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["--runs", str(good), "--base", "nope", "--output_dir", str(tmp_path / "o3")])
    assert err.value.code == 2 and "nope" in capsys.readouterr().err


def test_report_subcommand(tmp_path):
    from w2sr.cli import main as cli

    a = _results(tmp_path / "a", "m", {"x": 0.2})
    b = _results(tmp_path / "b", "m", {"x": 0.5})
    c = _results(tmp_path / "c", "m", {"x": 0.6})
    cli(
        [
            "report",
            "--runs",
            str(a),
            str(b),
            str(c),
            "--base",
            "a",
            "--reference",
            "c",
            "--output_dir",
            str(tmp_path / "r"),
            "--trainer.logger",
            "false",
        ]
    )
    assert json.loads((tmp_path / "r" / "report.json").read_text())["rgr"]["b"]["x"] == pytest.approx(0.75)


def test_report_subcommand_refuses_mismatched_runs_unless_allowed(tmp_path, capsys):
    from w2sr.cli import main as cli

    a = _results(tmp_path / "a", "m", {"x": 0.2})
    b = tmp_path / "b" / "results.json"
    b.parent.mkdir()
    b.write_text(a.read_text().replace('"grader": "paper"', '"grader": "default"'))
    args = ["report", "--runs", str(a), str(b), "--base", "a", "--trainer.logger", "false"]
    with pytest.raises(SystemExit) as err:
        cli([*args, "--output_dir", str(tmp_path / "r")])
    assert err.value.code == 2 and "--allow_mismatch true" in capsys.readouterr().err
    cli([*args, "--output_dir", str(tmp_path / "r2"), "--allow_mismatch", "true"])
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["allow_mismatch"] is True and report["mismatches"][0]["values"] == {"a": "paper", "b": "default"}


def test_report_json_is_the_report_dataclass(tmp_path):
    """report.json is ``Report.to_json()`` (``dataclasses.asdict``) with the keys in their documented order; the
    optional sections appear only when given."""
    from w2sr.evaluation.report_records import Cell, Report

    base = _results(tmp_path / "base", "m", {"x": 0.2, "y": 0.4})
    ref = _results(tmp_path / "ref", "m", {"x": 0.6, "y": 0.8})
    mid = _results(tmp_path / "mid", "m", {"x": 0.4, "y": 0.5})
    runs = [parse_run(str(p)) for p in (base, mid, ref)]
    report = build_report(runs, runs[0], runs[2])
    assert isinstance(report, Report) and isinstance(report.benchmarks["macro"]["mid"], Cell)
    assert report.benchmarks["x"]["mid"].gain == pytest.approx(0.2)
    on_disk = make_report([str(base), str(mid), str(ref)], tmp_path / "r", base="base", reference="ref")
    assert on_disk == json.loads((tmp_path / "r" / "report.json").read_text())
    assert list(on_disk) == [
        "metric",
        "runs",
        "base",
        "reference",
        "min_gap",
        "allow_mismatch",
        "mismatches",
        "unchecked",
        "macro_benchmarks",
        "macro_left_out",
        "bootstrap",
        "benchmarks",
        "rgr",
        "rgr_ci95",
        "rgr_notes",
        "notes",
    ]
    assert on_disk == json.loads(json.dumps(report.to_json()))
    assert list(on_disk["runs"][0]) == ["name", "results", "model", "adapter", "grader", "sampling"]
    assert list(on_disk["benchmarks"]["x"]["mid"]) == ["accuracy", "ci95", "gain", "gain_ci95"]
