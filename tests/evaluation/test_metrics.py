"""Metrics against hand-computed values: pass@k edge cases, maj@k with equivalent answers, bootstrap, macro."""

from __future__ import annotations

import subprocess
import sys
from math import comb

import pytest

from w2sr.evaluation.metrics import (ProblemSamples, benchmark_metrics, bootstrap_ci, ks_for, macro_average,
                                     majority_correct, pass_at_k)


def test_ks():
    assert ks_for(1) == [1]
    assert ks_for(4) == [1, 2, 4]
    assert ks_for(6) == [1, 2, 4, 6]
    assert ks_for(64) == [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 2, 0.5),            # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (5, 2, 2, 0.7),            # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 4, 1 - comb(7, 4) / comb(10, 4)),
    (4, 1, 1, 0.25),           # pass@1 = c/n
    (4, 0, 4, 0.0),            # c = 0
    (4, 4, 1, 1.0),            # c = n
    (4, 1, 4, 1.0),            # n = k: any correct sample
    (4, 0, 1, 0.0),
    (4, 3, 2, 1.0),            # n - c < k
    (200, 1, 100, 0.5),
])
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_first_k_and_ties():
    # classes: 0 = right answer; 1, 2 wrong answers; None = no answer
    correct = [False, True, False, True, False]
    classes = [1, 0, 1, 0, 2]
    assert majority_correct(correct, classes, 1) is False   # only the first sample votes
    assert majority_correct(correct, classes, 2) is False   # 1:1 tie -> the class seen first (1)
    assert majority_correct(correct, classes, 3) is False   # 2:1 for the wrong answer
    assert majority_correct(correct, classes, 4) is False   # 2:2 tie -> class 1 first
    assert majority_correct([True, False, True], [0, 1, 0], 3) is True
    assert majority_correct([False, False, True], [None, None, 0], 3) is True   # no-answer samples do not vote
    assert majority_correct([False, False], [None, None], 2) is False


def test_benchmark_metrics_hand_computed():
    problems = [
        ProblemSamples("a", [True, True, True, True], [0, 0, 0, 0]),        # c = n
        ProblemSamples("b", [False, False, False, False], [1, 1, 2, None]),  # c = 0
        ProblemSamples("c", [False, True, False, True], [1, 0, 1, 0]),       # c = 2, maj tie -> wrong first
        ProblemSamples("d", [None, None, None, None], [1, 1, 1, 1]),         # gold unparseable: unscored
    ]
    result = benchmark_metrics(problems, seed=0, resamples=500)
    assert result["problems"] == 4 and result["unscored"] == 1 and result["scored_problems"] == 3
    assert result["samples_per_problem"] == 4
    assert result["avg@n"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert result["pass@k"]["1"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert result["pass@k"]["2"] == pytest.approx((1 + 0 + (1 - comb(2, 2) / comb(4, 2))) / 3)
    assert result["pass@k"]["4"] == pytest.approx(2 / 3)
    assert set(result["pass@k"]) == set(result["maj@k"]) == {"1", "2", "4"}
    assert result["maj@k"]["1"] == pytest.approx(1 / 3)   # c's first sample is wrong
    assert result["maj@k"]["4"] == pytest.approx(1 / 3)   # 2:2 tie in c goes to the wrong class
    lo, hi = result["ci95"]
    assert 0 <= lo <= result["avg@n"] <= hi <= 1
    assert benchmark_metrics(problems, seed=0, resamples=500)["ci95"] == result["ci95"]  # seeded


def test_all_unscored_gives_no_numbers():
    result = benchmark_metrics([ProblemSamples("x", [None], [None])])
    assert result["unscored"] == 1 and result["avg@n"] is None and result["ci95"] is None


def test_bootstrap_interval_shrinks_with_more_problems_and_covers_the_mean():
    small, _ = bootstrap_ci([1, 0] * 10, seed=1)
    large, _ = bootstrap_ci([1, 0] * 1000, seed=1)
    assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
    assert large[1] - large[0] < small[1] - small[0]
    assert bootstrap_ci([1, 1, 1], seed=0)[0] == [1.0, 1.0]
    # percentile bootstrap of a 0/1 mean over 2000 problems: about +-1.96 * sqrt(.25/2000) = +-0.022
    assert large[1] - large[0] == pytest.approx(2 * 1.96 * (0.25 / 2000) ** 0.5, rel=0.15)


def test_macro_average():
    a = benchmark_metrics([ProblemSamples(str(i), [i % 2 == 0] * 2, [0, 0]) for i in range(10)], resamples=300)
    b = benchmark_metrics([ProblemSamples(str(i), [True]) for i in range(5)], resamples=300)
    macro = macro_average({"a": a, "b": b, "empty": benchmark_metrics([])})
    assert macro["benchmarks"] == ["a", "b"]
    assert macro["avg@n"] == pytest.approx((0.5 + 1.0) / 2)
    assert set(macro["pass@k"]) == {"1"}   # k shared by all benchmarks
    assert macro["ci95"][0] <= macro["avg@n"] <= macro["ci95"][1]


def test_majority_vote_counts_equivalent_answers_as_one():
    """``1/2`` and ``0.5`` are one answer (math-verify), so two wrong samples outvote one right sample."""
    from w2sr.evaluation.answer_classes import answer_classes

    answers = ["1/2", "3", "0.5", "\\frac{1}{2}", "7"]
    verdicts = [False, True, False, False, False]
    (classes,) = answer_classes([(answers, verdicts)])
    assert classes[0] == classes[2] == classes[3] != classes[1] and classes[4] not in (classes[0], classes[1])
    problem = ProblemSamples("p", verdicts, classes)
    assert majority_correct(problem.correct, problem.classes, 3) is False   # {1/2, 0.5} beats 3
    assert majority_correct(problem.correct, list(range(5)), 3) is False    # without classes: tie, first wins
    assert majority_correct([False, True, True, False], answer_classes([(["2", "3", "3.0", "2.0"],
                                                                        [False, True, True, False])])[0], 4) is False
    assert answer_classes([(["2", "2.00", None], [False, False, False])]) == [[1, 1, None]]


def test_metrics_imports_no_torch():
    code = "import sys, w2sr.evaluation.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
