"""w2sr report's seed groups (w2sr/evaluation/seeds.py): ``--runs 'w2sr=[s0/results.json,s1/...]'`` -> mean ± sd
over the seeds' values, per-seed RGR against the base and reference of the same seed, a pooled interval over seeds and
problems; each against hand-computed values that the nearest wrong formula misses.

Run: ``pytest tests/evaluation/test_report_seeds.py``.
"""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from conftest import run_cli
from test_report_compare import _ones, _results

from w2sr.evaluation.report import main, make_report
from w2sr.evaluation.runs import split_run_specs
from w2sr.records.jsonl import InputError


def _group(tmp_path, name: str, per_seed: list[int], n: int = 100, ids=None) -> str:
    """``name=[...]``: one results.json per seed, seed i with the first ``per_seed[i]`` of ``n`` problems right."""
    paths = []
    for i, right in enumerate(per_seed):
        seed_ids = {"x": ids(i)} if ids else None
        paths.append(str(_results(tmp_path / f"s{i}" / name, {"x": _ones(n, right)}, ids=seed_ids)))
    return f"{name}=[{','.join(paths)}]"


def test_split_run_specs_keeps_seed_groups_whole():
    assert split_run_specs(["a", "w2sr=[s0/r.json", "s1/r.json]", "c"]) == ["a", "w2sr=[s0/r.json,s1/r.json]", "c"]
    assert split_run_specs(["[a,w2sr=[s0,s1],c]"]) == ["a", "w2sr=[s0,s1]", "c"]
    assert split_run_specs(["a,b"]) == ["a", "b"]
    with pytest.raises(InputError, match="unbalanced"):
        split_run_specs(["w2sr=[s0,s1"])


def test_sd_is_over_the_seed_means_not_over_pooled_problems(tmp_path):
    """Seeds at 20%, 50%, 80% of 10 problems: sd over the three seed means is 30 points; the sd of the 30 pooled 0/1
    scores would be about 51 points."""
    group = _group(tmp_path, "w2sr", [2, 5, 8], n=10)
    report = make_report([group], tmp_path / "r")
    stats = report["seed_groups"]["groups"]["w2sr"]["benchmarks"]["x"]
    assert stats["per_seed"] == [0.2, 0.5, 0.8]
    assert stats["mean"] == pytest.approx(0.5) and report["benchmarks"]["x"]["w2sr"]["accuracy"] == pytest.approx(0.5)
    assert stats["sd"] == pytest.approx(0.3)
    pooled = [1] * 2 + [0] * 8 + [1] * 5 + [0] * 5 + [1] * 8 + [0] * 2
    assert statistics.stdev(pooled) == pytest.approx(0.5085, abs=1e-3)  # the nearest wrong formula
    assert report["runs"][0]["results"] == [str(tmp_path / f"s{i}" / "w2sr" / "results.json") for i in range(3)]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| x | 50.0 ± 30.0 [" in md and "| w2sr | x | 20.0, 50.0, 80.0 | 50.0 ± 30.0 |" in md


def test_per_seed_rgr_pairs_seeds_and_the_main_rgr_is_the_ratio_of_mean_gains(tmp_path):
    """Per seed: (40-20)/(60-20) = 0.5, (45-30)/(50-30) = 0.75, (50-40)/(80-40) = 0.25 -> mean 0.5, sd 0.25. The
    group's RGR is the ratio of the mean gains, (45-30)/(63.3-30) = 0.45; pairing each seed with the mean base and
    reference instead would give 0.3, 0.45, 0.6."""
    base = _group(tmp_path, "base", [20, 30, 40])
    ref = _group(tmp_path, "rl", [60, 50, 80])
    w2sr = _group(tmp_path, "w2sr", [40, 45, 50])
    report = make_report([base, w2sr, ref], tmp_path / "r", base="base", reference="rl")
    per_seed = report["seed_groups"]["groups"]["w2sr"]["rgr"]["x"]
    assert per_seed["per_seed"] == pytest.approx([0.5, 0.75, 0.25])
    assert per_seed["mean"] == pytest.approx(0.5) and per_seed["sd"] == pytest.approx(0.25)
    assert report["rgr"]["w2sr"]["x"] == pytest.approx(0.15 / (0.6333333 - 0.3), rel=1e-5)
    lo, hi = report["rgr_ci95"]["w2sr"]["x"]
    assert lo < 0.45 < hi
    assert report["seed_groups"]["groups"]["rl"]["rgr"] == {}  # the reference has no RGR of its own
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| w2sr | x | 40.0, 45.0, 50.0 | 45.0 ± 5.0 |" in md and "| 50, 75, 25 | 50% ± 25 |" in md


def test_pooled_interval_includes_the_spread_between_seeds(tmp_path):
    """Seeds at 20%, 50%, 80% of 200 problems: resampling problems only (within each seed) gives about 50 ± 3.5
    points; the two-stage bootstrap over seeds and problems spans about 20 to 80."""
    group = _group(tmp_path, "w2sr", [40, 100, 160], n=200)
    report = make_report([group], tmp_path / "r")
    lo, hi = report["benchmarks"]["x"]["w2sr"]["ci95"]
    assert lo < 0.25 and hi > 0.75
    assert report["seed_groups"]["groups"]["w2sr"]["benchmarks"]["x"]["pooled_ci95"] == [lo, hi]
    assert "two-stage bootstrap over seeds and problems" in report["seed_groups"]["pooling"]


def test_paired_seeds_give_a_gain_interval_above_zero(tmp_path):
    """The student beats the base by 5 points on every seed while the seeds range from 20% to 80%: with seeds and
    problems drawn once for both, every replicate's gain is >= 0; drawn apart, the interval would span about +-60."""
    base = _group(tmp_path, "base", [20, 50, 80])
    w2sr = _group(tmp_path, "w2sr", [25, 55, 85])
    report = make_report([base, w2sr], tmp_path / "r", base="base")
    cell = report["benchmarks"]["x"]["w2sr"]
    assert cell["gain"] == pytest.approx(0.05)
    assert 0 < cell["gain_ci95"][0] < 0.05 < cell["gain_ci95"][1] < 0.1


def test_a_single_base_stands_for_every_seed_and_an_undefined_seed_is_named(tmp_path):
    """One base run (a study's single prior) against three seeds; on seed 1 the reference does not beat the base, so
    that seed's RGR is undefined and the mean is over the two others."""
    base = str(_results(tmp_path / "base", {"x": _ones(100, 30)}))
    ref = _group(tmp_path, "rl", [70, 30, 50])
    w2sr = _group(tmp_path, "w2sr", [50, 40, 40])
    report = make_report([base, w2sr, ref], tmp_path / "r", base="base", reference="rl")
    seeds = report["seed_groups"]["groups"]["w2sr"]["rgr"]["x"]
    assert seeds["per_seed"][0] == pytest.approx(0.5) and seeds["per_seed"][1] is None
    assert seeds["per_seed"][2] == pytest.approx(0.5) and seeds["mean"] == pytest.approx(0.5)
    assert seeds["notes"][0].startswith("seed 1: undefined")
    assert "base" not in report["seed_groups"]["groups"]
    assert "Per-seed RGR of w2sr on x, seed 1: undefined" in (tmp_path / "r" / "report.md").read_text()


def test_seeds_with_their_own_held_out_problems_are_not_a_mismatch(tmp_path):
    """Each seed holds out other problems (ids s<i>-<j>): runs of the same seed share them, so the report compares
    and pools (one problem draw per seed); a single base scored on other problems is refused."""
    ids = lambda i: [f"s{i}-{j}" for j in range(50)]  # noqa: E731
    base = _group(tmp_path, "base", [10, 20, 30], n=50, ids=ids)
    w2sr = _group(tmp_path, "w2sr", [20, 30, 40], n=50, ids=ids)
    report = make_report([base, w2sr], tmp_path / "r", base="base")
    assert report["mismatches"] == []
    assert report["benchmarks"]["x"]["w2sr"]["gain"] == pytest.approx(0.2)
    assert report["benchmarks"]["x"]["w2sr"]["gain_ci95"][0] > 0
    single = str(_results(tmp_path / "single", {"x": _ones(50, 10)}))
    with pytest.raises(InputError, match="problem_ids"):
        make_report([single, w2sr], tmp_path / "r2", base="single")


def test_groups_of_other_sizes_and_unnamed_groups_exit_2(tmp_path, capsys):
    base = _group(tmp_path, "base", [20, 30, 40])
    two = _group(tmp_path, "w2sr", [40, 45])
    with pytest.raises(SystemExit) as err:
        main(["--runs", base, two, "--output_dir", str(tmp_path / "r")])
    assert err.value.code == 2 and "base has 3, w2sr has 2" in capsys.readouterr().err
    paths = two.partition("=")[2]  # an unnamed group inside the list: named by the folder its files share
    assert make_report([f"[{paths}]"], tmp_path / "r1")["runs"][0]["name"] == "w2sr"
    mixed = f"[[{tmp_path / 's0' / 'base' / 'results.json'},{tmp_path / 's1' / 'w2sr' / 'results.json'}]]"
    with pytest.raises(InputError, match="name this seed group"):
        make_report([mixed], tmp_path / "r2")


def test_seed_groups_through_both_commands(tmp_path, capsys):
    """``w2sr report`` and ``python -m w2sr.report`` take the issue's spelling and write the same report.json."""
    base = _group(tmp_path, "base", [20, 30, 40])
    ref = _group(tmp_path, "rl", [60, 50, 80])
    w2sr = _group(tmp_path, "w2sr", [40, 45, 50])
    args = ["--runs", base, w2sr, ref, "--base", "base", "--reference", "rl"]
    main([*args, "--output_dir", str(tmp_path / "m")])
    code, out = run_cli(["report", *args, "--output_dir", str(tmp_path / "c"), "--trainer.logger", "false"], capsys)
    assert code == 0, out
    by_module = json.loads((tmp_path / "m" / "report.json").read_text())
    by_cli = json.loads((tmp_path / "c" / "report.json").read_text())
    assert by_module == by_cli
    assert by_cli["seed_groups"]["groups"]["w2sr"]["rgr"]["x"]["per_seed"] == pytest.approx([0.5, 0.75, 0.25])
    assert np.isclose(by_cli["rgr"]["w2sr"]["x"], 0.45)


def test_macro_row_of_a_seed_group_is_per_seed_then_over_seeds(tmp_path):
    """Two benchmarks: each seed's macro is the mean of its two benchmarks (30, 50, 70), and the sd is over those."""
    paths = []
    for i, (a, b) in enumerate([(20, 40), (40, 60), (60, 80)]):
        paths.append(str(_results(tmp_path / f"s{i}" / "w2sr", {"a": _ones(100, a), "b": _ones(100, b)})))
    report = make_report([f"w2sr=[{','.join(paths)}]"], tmp_path / "r")
    macro = report["seed_groups"]["groups"]["w2sr"]["benchmarks"]["macro"]
    assert macro["per_seed"] == pytest.approx([0.3, 0.5, 0.7]) and macro["sd"] == pytest.approx(0.2)
    assert report["benchmarks"]["macro"]["w2sr"]["accuracy"] == pytest.approx(0.5)
    lo, hi = macro["pooled_ci95"]
    assert lo < 0.35 and hi > 0.65  # the seeds' spread, drawn once for both benchmarks
