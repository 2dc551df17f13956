"""Rewards: each completion graded by w2sr's own verifier against its problem's gold answer.

Grading goes through ``w2sr.verification.grade.verify_records`` with the ``grader`` preset (``paper`` by default:
the last ``\\boxed{}`` against gold), in the verifier's killable worker process (every answer decided within its time
limit, or killed). Reward 1 for a correct answer, 0 for a wrong one or none; ``NaN`` for an answer the verifier cannot
decide (gold it cannot parse, a timeout, a crash in math-verify): such a completion gets no advantage
(``w2sr.rl.advantages``) and is counted. A truncated completion is scored 0 (``mask_truncated: false``) or graded
like any other and left out of the loss (``mask_truncated: true``). Exercised by ``pytest tests/rl/test_rewards.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from w2sr.records.problems import Problem
from w2sr.verification.grade import VerifyOptions, verify_records

UNGRADABLE = ("bad_gold", "timeout", "error")


@dataclass
class Scores:
    """The rewards of a list of completions and what the verifier said about them."""

    rewards: list[float]
    """1.0 correct, 0.0 wrong, NaN ungradable."""
    statuses: Counter = field(default_factory=Counter)
    """Verifier statuses (``correct``, ``wrong``, ``no_answer``, ``truncated``, ``timeout``, ...) and their counts."""

    @property
    def ungradable(self) -> int:
        return sum(self.statuses[s] for s in UNGRADABLE)


def score_completions(
    problems: list[Problem],
    texts: list[str],
    truncated: list[bool],
    *,
    grader: str = "paper",
    timeout: float = 5.0,
    truncated_as_wrong: bool = True,
) -> Scores:
    """Grade ``texts[i]`` (a completion of ``problems[i]``); see the module docstring."""
    options = VerifyOptions(grader=grader, timeout=timeout, truncated_as_wrong=truncated_as_wrong, workers=1)
    records = [
        {**problem.to_dict(), "completion": text, "finish_reason": "length" if cut else "stop"}
        for problem, text, cut in zip(problems, texts, truncated)
    ]
    verdicts = verify_records(records, options)
    rewards, statuses = [], Counter()
    for verdict in verdicts:
        status = verdict[options.status_field]
        statuses[status] += 1
        ok = verdict["correct"]
        rewards.append(float("nan") if ok is None or status in UNGRADABLE else float(bool(ok)))
    return Scores(rewards, statuses)
