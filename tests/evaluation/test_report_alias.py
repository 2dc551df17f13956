"""``python -m w2sr.report`` is ``w2sr report``: the same options (``--min_gap`` included, which the old argparse
alias lacked) and the same list syntax, read from one declaration (``w2sr.evaluation.report_request.ReportRequest``).

Run: ``pytest tests/evaluation/test_report_alias.py``.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from w2sr.evaluation.report import main

SAMPLING = {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64, "seed": 0, "batch_size": 16}


def _run(folder, right: int, n: int = 100):
    """A results.json of ``w2sr evaluate``: one benchmark, ``right`` of ``n`` problems solved."""
    folder.mkdir(parents=True)
    scores = [1.0] * right + [0.0] * (n - right)
    acc = right / n
    row = {
        "problems": n,
        "samples_per_problem": 1,
        "avg@n": acc,
        "pass@k": {"1": acc},
        "maj@k": {"1": acc},
        "ci95": [acc, acc],
        "sampling": SAMPLING,
        "problem_scores": {"ids": [f"p{i}" for i in range(n)], "avg@n": scores},
    }
    results = {"model": folder.name, "grader": "paper", "sampling": SAMPLING, "benchmarks": {"toy": row}}
    (folder / "results.json").write_text(json.dumps(results))
    return str(folder)


def test_min_gap_and_space_separated_runs_in_both_spellings(tmp_path, capsys):
    runs = [_run(tmp_path / "base", 20), _run(tmp_path / "w2sr", 30), _run(tmp_path / "rl", 40)]
    common = ["--runs", *runs, "--base", "base", "--reference", "rl"]
    main([*common, "--output_dir", str(tmp_path / "alias")])
    code, out = run_cli(["report", *common, "--output_dir", str(tmp_path / "cli"), "--trainer.logger", "false"], capsys)
    assert code == 0, out
    alias = json.loads((tmp_path / "alias" / "report.json").read_text())
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert alias["rgr"] == cli["rgr"] and alias["rgr"]["w2sr"]["toy"] == pytest.approx(0.5)
    # the reference gains 20 points: with --min_gap 0.25 RGR is undefined, in both spellings
    main([*common, "--output_dir", str(tmp_path / "alias_gap"), "--min_gap", "0.25"])
    code, out = run_cli(
        [
            "report",
            *common,
            "--output_dir",
            str(tmp_path / "cli_gap"),
            "--min_gap",
            "0.25",
            "--trainer.logger",
            "false",
        ],
        capsys,
    )
    assert code == 0, out
    for folder in ("alias_gap", "cli_gap"):
        report = json.loads((tmp_path / folder / "report.json").read_text())
        assert report["rgr"]["w2sr"]["toy"] is None and "undefined" in report["rgr_notes"]["w2sr"]["toy"]
