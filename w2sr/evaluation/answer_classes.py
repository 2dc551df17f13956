"""Answer classes for maj@k: equivalent answers of one problem's samples share a class id.

Correct answers are class 0; distinct wrong answers are compared pairwise with math-verify in the verification
worker pool (plain decimals numerically) and merged with union-find. Used by ``w2sr.evaluation.run``.
Exercised by ``w2sr evaluate --sampling.n 4`` and ``pytest tests/evaluation/test_metrics.py``.
"""

from __future__ import annotations

import re
from collections import defaultdict

from w2sr.verification.grade import VerifyOptions
from w2sr.verification.pool import CORRECT, SHARED_LOCK, WorkerPool, shared_pool

_FLOAT_RE = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")


def answer_classes(
    problems: list[tuple[list[str | None], list[bool | None]]], options: VerifyOptions | None = None
) -> list[list[int | None]]:
    """For maj@k: give each sample an answer-class id per problem, equivalent answers sharing one.

    ``problems`` holds, per problem, each sample's extracted answer and verdict. Correct answers are equivalent to
    gold, so they form class 0; distinct wrong answers are compared pairwise with math-verify (plain decimals
    numerically, without a worker) and merged (union-find); samples without an answer get None.
    """
    options = options or VerifyOptions()
    plans = []  # per problem: (distinct wrong answers, their union-find parents)
    pairs: list[tuple[int, int, int]] = []  # (problem, i, j) to ask math-verify about
    for index, (answers, verdicts) in enumerate(problems):
        distinct: list[str] = []
        for answer, ok in zip(answers, verdicts):
            if answer is not None and ok is not True and answer.strip() not in distinct:
                distinct.append(answer.strip())
        parent = list(range(len(distinct)))
        plans.append((distinct, parent))
        for i in range(len(distinct)):
            for j in range(i + 1, len(distinct)):
                a, b = distinct[i], distinct[j]
                if _FLOAT_RE.fullmatch(a) and _FLOAT_RE.fullmatch(b):
                    if float(a) == float(b):
                        _union(parent, i, j)
                else:
                    pairs.append((index, i, j))
    if pairs:
        groups: list[tuple[str, list[str]]] = []
        owners: list[list[tuple[int, int, int]]] = []
        by_first: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
        for pair in pairs:
            by_first[pair[:2]].append(pair)
        for (index, i), members in by_first.items():
            groups.append((plans[index][0][i], [plans[index][0][j] for _, _, j in members]))
            owners.append(members)

        def on_result(group: int, position: int, outcome: str, detail: str) -> None:
            index, i, j = owners[group][position]
            if outcome == CORRECT:
                _union(plans[index][1], i, j)

        if options.workers > 1:
            with WorkerPool(options.workers, options.timeout, options.memory_mb) as pool:
                pool.run(groups, on_result)
        else:
            with SHARED_LOCK:
                shared_pool(options).run(groups, on_result)
    out: list[list[int | None]] = []
    for (answers, verdicts), (distinct, parent) in zip(problems, plans):
        classes: list[int | None] = []
        for answer, ok in zip(answers, verdicts):
            if answer is None:
                classes.append(None)
            elif ok is True:
                classes.append(0)
            else:
                classes.append(1 + _find(parent, distinct.index(answer.strip())))
        out.append(classes)
    return out


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _union(parent: list[int], i: int, j: int) -> None:
    a, b = _find(parent, i), _find(parent, j)
    if a != b:
        parent[max(a, b)] = min(a, b)
