"""Seed groups in ``w2sr report``: runs given as ``--runs 'w2sr=[s0/results.json,s1/results.json,s2/results.json]'``
are shown as the mean ± sd over their seeds, with each seed's value and RGR, and a pooled interval.

* **Pairing** — the i-th file of every group is seed i: groups must have the same number of seeds; a single run (the
  base of a study with one prior, say) stands for every seed.
* **mean ± sd** — the mean of the seeds' accuracies and their sample standard deviation (n - 1): the spread of the
  seed means, not of the pooled problems.
* **Per-seed RGR** — (acc_i - base_i) / (ref_i - base_i) with the base and reference of the same seed, undefined by
  the same rules as a single RGR; their mean ± sd beside it. The report's main RGR of a group is the ratio of the mean
  gains (as the macro row is a ratio of macro gains), with the pooled interval.
* **Pooled interval** — :data:`POOLING` below says how it is drawn; with one seed everywhere it is exactly the paired
  bootstrap over problems that single runs get.

:func:`draw` makes the replicates of one benchmark; :func:`seed_stats` and :func:`seed_rgr` the per-seed numbers.
Exercised by ``pytest tests/evaluation/test_report_seeds.py``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from w2sr.evaluation.metrics import benchmark_seed
from w2sr.evaluation.report_records import SeedRGR, SeedStats
from w2sr.evaluation.runs import Arm, problem_values, run_scores
from w2sr.records.jsonl import InputError

POOLING = (
    "two-stage bootstrap over seeds and problems: each replicate draws the K seed positions with replacement (one "
    "draw for every run and benchmark, so paired seeds stay paired) and the problems with replacement (one draw for "
    "every run and seed when all seeds were scored on the same problems, else one per seed position, shared by the "
    "runs of that seed); a replicate is the mean over the drawn seeds of the mean over the drawn problems, and the "
    "interval spans its 2.5th to 97.5th percentiles"
)


def seed_count(arms: Sequence[Arm]) -> int:
    """K, the number of seeds of every seed group (1 without groups); groups of different sizes raise InputError."""
    sizes = {arm.name: arm.seeds for arm in arms if arm.seeds > 1}
    if len(set(sizes.values())) > 1:
        raise InputError(
            "seed groups are paired by position, so they need the same number of seeds: "
            + ", ".join(f"{name} has {k}" for name, k in sizes.items()),
            field="runs",
        )
    return next(iter(sizes.values()), 1)


def seed_draws(seed: int, seeds: int, resamples: int) -> np.ndarray:
    """``(resamples, K)`` seed positions drawn with replacement, one draw shared by every benchmark and run."""
    return np.random.default_rng(benchmark_seed(seed, "#seeds")).integers(0, seeds, size=(resamples, seeds))


@dataclass
class Draws:
    """The replicates of one benchmark: per run and seed position (problems resampled), and pooled over seeds."""

    per_seed: dict[str, list[np.ndarray]] = field(default_factory=dict)
    pooled: dict[str, np.ndarray] = field(default_factory=dict)
    problems: int = 0


def _shared_ids(values: dict[str, list[dict[str, float]]], position: int) -> list[str]:
    """The problem ids every run scored at one seed position, in the first run's order."""
    columns = [v[position] for v in values.values()]
    common = set.intersection(*(set(c) for c in columns))
    return [pid for pid in columns[0] if pid in common]


def draw(arms: Sequence[Arm], bench: str, metric: str, seed: int, resamples: int, seed_index: np.ndarray) -> Draws:
    """Replicates of every run with per-problem scores at every seed position (see :data:`POOLING`). The problem
    draw comes first from ``benchmark_seed(seed, bench)``, so with one seed it is the single-run paired bootstrap."""
    seeds = seed_index.shape[1]
    values: dict[str, list[dict[str, float]]] = {}
    for arm in arms:
        columns = [problem_values(run_scores(arm.at(p)).get(bench), metric) for p in range(seeds)]
        if all(c is not None for c in columns):
            values[arm.name] = columns  # type: ignore[assignment]
    if not values:
        return Draws()
    shared = [_shared_ids(values, p) for p in range(seeds)]
    if not all(shared):
        return Draws()
    rng = np.random.default_rng(benchmark_seed(seed, bench))
    crossed = all(set(ids) == set(shared[0]) for ids in shared)
    if crossed:
        shared = [shared[0]] * seeds
        index = [rng.integers(0, len(shared[0]), size=(resamples, len(shared[0])))] * seeds
    else:
        index = [rng.integers(0, len(ids), size=(resamples, len(ids))) for ids in shared]
    out = Draws(problems=len(shared[0]) if crossed else sum(len(ids) for ids in shared))
    rows = np.arange(resamples)[:, None]
    for name, columns in values.items():
        out.per_seed[name] = [
            np.asarray([columns[p][pid] for pid in shared[p]], dtype=float)[index[p]].mean(axis=1) for p in range(seeds)
        ]
        stacked = np.stack(out.per_seed[name])  # (K, resamples)
        out.pooled[name] = stacked[seed_index, rows].mean(axis=1) if seeds > 1 else stacked[0]
    return out


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None
    return statistics.fmean(defined), statistics.stdev(defined) if len(defined) > 1 else 0.0


def seed_stats(per_seed: list[float | None], pooled_ci95: list[float] | None) -> SeedStats:
    """Mean and sample sd over the seeds' values (None when a seed has no value), with the pooled interval."""
    mean, sd = _mean_sd(per_seed) if all(v is not None for v in per_seed) else (None, None)
    return SeedStats(mean, sd, per_seed, pooled_ci95)


def seed_rgr(per_seed: list[tuple[float | None, str]]) -> SeedRGR:
    """Per-seed RGR values (with why a value is undefined) -> their list, mean and sample sd."""
    values = [value for value, _ in per_seed]
    mean, sd = _mean_sd(values)
    notes = [f"seed {i}: {why}" for i, (value, why) in enumerate(per_seed) if value is None and why]
    return SeedRGR(values, mean, sd, notes)
