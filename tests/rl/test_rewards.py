"""Rewards (w2sr.rl.rewards): the verifier's paper grader, ungradable answers as NaN, truncated answers."""

from __future__ import annotations

import math

from w2sr.records.problems import Problem
from w2sr.rl.rewards import score_completions


def test_rewards_from_the_paper_grader():
    problem = Problem("p", "Compute 1 + 2.", "3", "toy")
    bad_gold = Problem("q", "Compute the thing.", "", "toy")
    texts = ["so \\boxed{3}", "\\boxed{4}", "the answer is 3", "\\boxed{3} then cut", "\\boxed{3}"]
    owners = [problem, problem, problem, problem, bad_gold]
    cut = [False, False, False, True, False]
    scores = score_completions(owners, texts, cut, grader="paper", truncated_as_wrong=True)
    assert scores.rewards[:4] == [1.0, 0.0, 0.0, 0.0]  # no box: 0 under the paper grader; truncated: scored 0
    assert math.isnan(scores.rewards[4]) and scores.ungradable == 1
    assert scores.statuses["no_answer"] == 1 and scores.statuses["truncated"] == 1
    kept = score_completions(owners[3:4], texts[3:4], cut[3:4], grader="paper", truncated_as_wrong=False)
    assert kept.rewards == [1.0]  # mask_truncated: graded like any other (and left out of the loss)
    lenient = score_completions(owners[2:3], texts[2:3], [False], grader="default")
    assert lenient.rewards == [1.0]  # the grader preset is honoured
