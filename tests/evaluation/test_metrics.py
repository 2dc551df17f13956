"""Metrics against hand-computed values: pass@k edge cases, maj@k with equivalent answers, bootstrap, macro."""

from __future__ import annotations

import subprocess
import sys
from math import comb

import pytest

from w2sr.evaluation.metrics import (
    ProblemSamples,
    benchmark_metrics,
    bootstrap_ci,
    ks_for,
    macro_average,
    majority_correct,
    pass_at_k,
)


def test_ks():
    assert ks_for(1) == [1]
    assert ks_for(4) == [1, 2, 4]
    assert ks_for(6) == [1, 2, 4, 6]
    assert ks_for(64) == [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 4, 1 - comb(7, 4) / comb(10, 4)),
        (4, 1, 1, 0.25),  # pass@1 = c/n
        (4, 0, 4, 0.0),  # c = 0
        (4, 4, 1, 1.0),  # c = n
        (4, 1, 4, 1.0),  # n = k: any correct sample
        (4, 0, 1, 0.0),
        (4, 3, 2, 1.0),  # n - c < k
        (200, 1, 100, 0.5),
    ],
)
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
    assert majority_correct(correct, classes, 1) is False  # only the first sample votes
    assert majority_correct(correct, classes, 2) is False  # 1:1 tie -> the class seen first (1)
    assert majority_correct(correct, classes, 3) is False  # 2:1 for the wrong answer
    assert majority_correct(correct, classes, 4) is False  # 2:2 tie -> class 1 first
    assert majority_correct([True, False, True], [0, 1, 0], 3) is True
    assert majority_correct([False, False, True], [None, None, 0], 3) is True  # no-answer samples do not vote
    assert majority_correct([False, False], [None, None], 2) is False


def test_benchmark_metrics_hand_computed():
    problems = [
        ProblemSamples("a", [True, True, True, True], [0, 0, 0, 0]),  # c = n
        ProblemSamples("b", [False, False, False, False], [1, 1, 2, None]),  # c = 0
        ProblemSamples("c", [False, True, False, True], [1, 0, 1, 0]),  # c = 2, maj tie -> wrong first
        ProblemSamples("d", [None, None, None, None], [1, 1, 1, 1]),  # gold unparseable: unscored
    ]
    result = benchmark_metrics(problems, seed=0, resamples=500)
    assert result["problems"] == 4 and result["unscored"] == 1 and result["scored_problems"] == 3
    assert result["samples_per_problem"] == 4
    assert result["avg@n"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert result["pass@k"]["1"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert result["pass@k"]["2"] == pytest.approx((1 + 0 + (1 - comb(2, 2) / comb(4, 2))) / 3)
    assert result["pass@k"]["4"] == pytest.approx(2 / 3)
    assert set(result["pass@k"]) == set(result["maj@k"]) == {"1", "2", "4"}
    assert result["maj@k"]["1"] == pytest.approx(1 / 3)  # c's first sample is wrong
    assert result["maj@k"]["4"] == pytest.approx(1 / 3)  # 2:2 tie in c goes to the wrong class
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
    assert set(macro["pass@k"]) == {"1"}  # k shared by all benchmarks
    assert macro["ci95"][0] <= macro["avg@n"] <= macro["ci95"][1]


def test_majority_vote_counts_equivalent_answers_as_one():
    """``1/2`` and ``0.5`` are one answer (math-verify), so two wrong samples outvote one right sample."""
    from w2sr.evaluation.answer_classes import answer_classes

    answers = ["1/2", "3", "0.5", "\\frac{1}{2}", "7"]
    verdicts = [False, True, False, False, False]
    (classes,) = answer_classes([(answers, verdicts)])
    assert classes[0] == classes[2] == classes[3] != classes[1] and classes[4] not in (classes[0], classes[1])
    problem = ProblemSamples("p", verdicts, classes)
    assert majority_correct(problem.correct, problem.classes, 3) is False  # {1/2, 0.5} beats 3
    assert majority_correct(problem.correct, list(range(5)), 3) is False  # without classes: tie, first wins
    assert (
        majority_correct(
            [False, True, True, False], answer_classes([(["2", "3", "3.0", "2.0"], [False, True, True, False])])[0], 4
        )
        is False
    )
    assert answer_classes([(["2", "2.00", None], [False, False, False])]) == [[1, 1, None]]


def test_metrics_imports_no_torch():
    code = "import sys, w2sr.evaluation.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- each metric against its nearest wrong formula
def test_majority_is_the_most_frequent_class_not_the_first_answer():
    """The first answer is wrong, the two later ones agree on the right answer: maj@3 is right, maj@1 wrong."""
    assert majority_correct([False, True, True], [1, 0, 0], 3) is True
    assert majority_correct([False, True, True], [1, 0, 0], 1) is False
    assert majority_correct([True, False, False], [0, 2, 2], 3) is False  # and the other way round
    result = benchmark_metrics([ProblemSamples("p", [False, True, True, False], [1, 0, 0, 2])], resamples=10)
    assert result["maj@k"] == {"1": 0.0, "2": 0.0, "4": 1.0}  # k = 2: a 1:1 tie goes to the first answer
    assert majority_correct([False, True, True, False], [1, 0, 0, 2], 4) is True
    assert majority_correct([True, False, False, False], [0, 3, 3, 4], 4) is False


def test_majority_counts_only_the_first_k_samples():
    """Among the first 3 the wrong answer leads 2:1; over all 5 the right one leads 3:2."""
    correct, classes = [True, False, False, True, True], [0, 1, 1, 0, 0]
    assert majority_correct(correct, classes, 3) is False
    assert majority_correct(correct, classes, 5) is True


def test_pass_at_k_is_unbiased_not_one_minus_miss_rate_to_the_k():
    """n = 4, c = 1, k = 2: 1 - C(3,2)/C(4,2) = 0.5, while 1 - (1 - 1/4)^2 = 0.4375 (sampling with replacement)."""
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 2) != pytest.approx(1 - (1 - 1 / 4) ** 2)
    assert pass_at_k(10, 2, 5) == pytest.approx(1 - comb(8, 5) / comb(10, 5))  # 0.7778, not 1 - .8^5 = 0.6723


def test_avg_at_n_is_the_mean_of_problem_means_not_the_pooled_sample_mean():
    """One problem with 1 right sample of 1, one with 0 of 3: avg@n = (1 + 0) / 2 = 0.5, not pooled 1 / 4."""
    result = benchmark_metrics(
        [ProblemSamples("a", [True], [0]), ProblemSamples("b", [False] * 3, [1, 1, 1])], resamples=10
    )
    assert result["avg@n"] == pytest.approx(0.5)
    assert result["samples_per_problem"] == {"min": 1, "max": 3}
    assert result["problem_scores"] == {
        "ids": ["a", "b"],
        "avg@n": [1.0, 0.0],
        "pass@k": {"1": [1.0, 0.0]},
        "maj@k": {"1": [1.0, 0.0]},
    }


def test_bootstrap_resamples_problems_not_samples():
    """20 problems whose 4 samples agree (10 all right, 10 all wrong): the interval is that of 20 draws, about
    +-1.96 * sqrt(.25 / 20) = +-0.22, not of 80 independent samples (+-0.11)."""
    problems = [ProblemSamples(str(i), [i < 10] * 4, [0 if i < 10 else 1] * 4) for i in range(20)]
    lo, hi = benchmark_metrics(problems, seed=3)["ci95"]
    assert hi - lo == pytest.approx(2 * 1.96 * (0.25 / 20) ** 0.5, rel=0.2)


def test_macro_is_unweighted_over_benchmarks_not_pooled_over_problems():
    """10 problems at 50% and 40 at 100%: macro 75%, pooled 45/50 = 90%."""
    a = benchmark_metrics([ProblemSamples(str(i), [i < 5]) for i in range(10)], resamples=50)
    b = benchmark_metrics([ProblemSamples(str(i), [True]) for i in range(40)], resamples=50)
    assert macro_average({"a": a, "b": b})["avg@n"] == pytest.approx(0.75)


def test_benchmark_seed_is_stable_and_differs_per_benchmark():
    from w2sr.evaluation.metrics import benchmark_seed

    assert benchmark_seed(0, "math500") == 2478776575404328313  # BLAKE2b: the same in every process
    assert benchmark_seed(0, "aime24") != benchmark_seed(0, "math500") != benchmark_seed(1, "math500")
    code = "from w2sr.evaluation.metrics import benchmark_seed; print(benchmark_seed(0, 'math500'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    ).stdout
    assert out.strip() == "2478776575404328313"


def test_equal_size_benchmarks_get_independent_resamples(monkeypatch):
    """Two benchmarks with the same 60 per-problem scores (scored by w2sr.evaluation.run): each is bootstrapped with
    its own seed, so their replicates differ, and the macro interval is the independent-benchmark one, about
    1/sqrt(2) of one benchmark's width (with one shared seed it would be exactly that width)."""
    import numpy as np

    from w2sr.evaluation import run
    from w2sr.verification.grade import VerifyOptions

    replicates = []

    def recording(*args, **kwargs):
        result = benchmark_metrics(*args, **kwargs)
        replicates.append(result["_replicates"])
        return result

    monkeypatch.setattr(run, "benchmark_metrics", recording)
    records = [
        {
            "id": f"p{i}",
            "benchmark": name,
            "sample": 0,
            "prediction": "1" if i % 2 else None,
            "correct": bool(i % 2),
            "finish_reason": "stop",
        }
        for name in ("a", "b")
        for i in range(60)
    ]
    benchmarks, macro = run.score_records(records, VerifyOptions(), seed=0)
    a, b = benchmarks["a"], benchmarks["b"]
    assert a["avg@n"] == b["avg@n"] == 0.5 and a["bootstrap_seed"] != b["bootstrap_seed"]
    assert abs(np.corrcoef(replicates[0], replicates[1])[0, 1]) < 0.1  # one seed: correlation 1
    width = (a["ci95"][1] - a["ci95"][0] + b["ci95"][1] - b["ci95"][0]) / 2
    assert macro["ci95"][1] - macro["ci95"][0] == pytest.approx(width / 2**0.5, rel=0.15)
