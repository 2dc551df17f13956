"""Metrics over sampled answers: avg@n, unbiased pass@k, maj@k, seeded bootstrap intervals, macro averages.

Pure Python + numpy (no torch), so it runs anywhere, including score-only evaluation of completions made elsewhere.
``w2sr.evaluation.run`` feeds it one :class:`ProblemSamples` per problem (each sample's verdict and the id of its answer
class, where answers the verifier calls equivalent share a class). Exercised by ``w2sr evaluate`` and
``pytest tests/evaluation/test_metrics.py``.

Definitions (per benchmark; a problem whose gold answer cannot be parsed is *unscored*: counted, left out)
* ``avg@n`` — mean over problems of the share of its n samples that are correct (= mean over all samples when every
  problem has n samples); with n = 1 it is pass@1 of greedy or sampled decoding.
* ``pass@k`` — the unbiased estimator of Chen et al. (2021): ``1 - C(n-c, k) / C(n, k)`` per problem (n samples,
  c correct), averaged over problems; reported for k = 1, 2, 4, ... <= n and k = n.
* ``maj@k`` — majority vote over the answers of the **first k samples** (as lighteval and Qwen2.5-Math's evaluation
  do, not an expectation over subsets): samples without an answer do not vote; answers in the same class count as
  one; a tie goes to the class whose first sample comes first; the vote is right when that class is right. No
  answer at all among the k samples = wrong. Same k values as pass@k.
* ``ci95`` — a seeded percentile bootstrap over problems (problems resampled with replacement) of ``avg@n``; each
  benchmark gets its own seed, :func:`benchmark_seed` of the run seed and the benchmark name, so two benchmarks of
  equal size never share resample indices.
* ``problem_scores`` — each scored problem's own avg@n, pass@k and maj@k (``{"ids": [...], "avg@n": [...],
  "pass@k": {"1": [...]}, "maj@k": {...}}``), for the paired intervals of ``w2sr report``.
* macro — the unweighted mean over benchmarks of each metric (k values every benchmark has); its ``ci95`` averages
  the benchmarks' bootstrap replicates, i.e. it treats benchmarks as independent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ProblemSamples",
    "ks_for",
    "pass_at_k",
    "majority_correct",
    "bootstrap_ci",
    "benchmark_metrics",
    "macro_average",
    "benchmark_seed",
    "problem_scores",
    "DEFAULT_RESAMPLES",
]

DEFAULT_RESAMPLES = 2000


@dataclass
class ProblemSamples:
    """The samples of one problem, in sample order.

    ``correct``: each sample's verdict (None = the gold answer could not be parsed: the problem is unscored).
    ``classes``: each sample's answer class (equal ids = answers the verifier calls equivalent; None = no answer).
    """

    id: str
    correct: list[bool | None]
    classes: list[int | None] = field(default_factory=list)

    @property
    def scored(self) -> bool:
        return bool(self.correct) and all(c is not None for c in self.correct)


def ks_for(n: int) -> list[int]:
    """k = 1, 2, 4, ... <= n, and n itself."""
    if n < 1:
        return []
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n-c, k) / C(n, k)`` (the numerically stable product form)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_correct(correct: Sequence[bool | None], classes: Sequence[int | None], k: int) -> bool:
    """maj@k for one problem: the most frequent answer class among the first ``k`` samples is the right one."""
    counts: dict[int, int] = {}
    first: dict[int, int] = {}
    for index, cls in enumerate(classes[:k]):
        if cls is None:
            continue
        counts[cls] = counts.get(cls, 0) + 1
        first.setdefault(cls, index)
    if not counts:
        return False
    winner = max(counts, key=lambda cls: (counts[cls], -first[cls]))
    return bool(correct[first[winner]])


def benchmark_seed(seed: int, benchmark: str) -> int:
    """The bootstrap seed of one benchmark: a stable hash (BLAKE2b, not Python's salted ``hash``) of the run seed and
    the benchmark name, in [0, 2**63)."""
    digest = hashlib.blake2b(f"{seed}\x1f{benchmark}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def bootstrap_ci(
    values: Sequence[float], seed: int = 0, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95
) -> tuple[list[float] | None, np.ndarray]:
    """``([lo, hi], replicate means)``: percentile bootstrap of the mean of ``values``, seeded."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return None, np.empty(0)
    rng = np.random.default_rng(seed)
    replicates = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(replicates, [tail, 100 - tail])
    return [float(lo), float(hi)], replicates


def benchmark_metrics(
    problems: Sequence[ProblemSamples], seed: int = 0, resamples: int = DEFAULT_RESAMPLES
) -> dict[str, Any]:
    """Every metric for one benchmark (see the module docstring). The bootstrap replicates are returned under the
    private key ``_replicates`` for :func:`macro_average`; drop it before writing JSON."""
    scored = [p for p in problems if p.scored]
    sizes = sorted({len(p.correct) for p in scored})
    n = sizes[0] if sizes else 0
    result: dict[str, Any] = {
        "problems": len(problems),
        "scored_problems": len(scored),
        "unscored": len(problems) - len(scored),
        "samples_per_problem": n if len(sizes) <= 1 else {"min": sizes[0], "max": sizes[-1]},
        "avg@n": None,
        "pass@k": {},
        "maj@k": {},
        "ci95": None,
        "problem_scores": None,
        "_replicates": np.empty(0),
    }
    if not scored:
        return result
    scores = problem_scores(scored)
    result["avg@n"] = float(np.mean(scores["avg@n"]))
    for metric in ("pass@k", "maj@k"):
        result[metric] = {k: float(np.mean(values)) for k, values in scores[metric].items()}
    result["ci95"], result["_replicates"] = bootstrap_ci(scores["avg@n"], seed, resamples)
    result["problem_scores"] = scores
    return result


def problem_scores(problems: Sequence[ProblemSamples]) -> dict[str, Any]:
    """Each scored problem's avg@n, pass@k and maj@k (k values of the smallest sample count), in problem order."""
    scored = [p for p in problems if p.scored]
    n = min((len(p.correct) for p in scored), default=0)
    out: dict[str, Any] = {
        "ids": [p.id for p in scored],
        "avg@n": [sum(bool(c) for c in p.correct) / len(p.correct) for p in scored],
        "pass@k": {},
        "maj@k": {},
    }
    for k in ks_for(n):
        out["pass@k"][str(k)] = [pass_at_k(len(p.correct), sum(bool(c) for c in p.correct), k) for p in scored]
        out["maj@k"][str(k)] = [float(majority_correct(p.correct, p.classes or _own_classes(p), k)) for p in scored]
    return out


def _own_classes(problem: ProblemSamples) -> list[int | None]:
    """Without answer classes every sample votes alone: the first sample wins every tie."""
    return list(range(len(problem.correct)))


def macro_average(per_benchmark: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over benchmarks that have scored problems (k values shared by all of them)."""
    rows = {name: row for name, row in per_benchmark.items() if row.get("avg@n") is not None}
    macro: dict[str, Any] = {"benchmarks": sorted(rows), "avg@n": None, "pass@k": {}, "maj@k": {}, "ci95": None}
    if not rows:
        return macro
    macro["avg@n"] = float(np.mean([row["avg@n"] for row in rows.values()]))
    for metric in ("pass@k", "maj@k"):
        shared = set.intersection(*(set(row[metric]) for row in rows.values()))
        macro[metric] = {k: float(np.mean([row[metric][k] for row in rows.values()])) for k in sorted(shared, key=int)}
    replicates = [row.get("_replicates") for row in rows.values()]
    if all(r is not None and len(r) for r in replicates) and len({len(r) for r in replicates}) == 1:
        mean = np.mean(np.stack(replicates), axis=0)
        lo, hi = np.percentile(mean, [2.5, 97.5])
        macro["ci95"] = [float(lo), float(hi)]
    return macro
