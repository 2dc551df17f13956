"""The numbers of ``w2sr report``: macro rows, and gains and RGR with paired bootstrap intervals over problems.

:func:`build_report` runs these steps, each a function below: names must be unique -> which benchmarks every run
has (:func:`coverage`) -> the settings check (:mod:`w2sr.evaluation.settings`; refused, exit 2, unless
``allow_mismatch``) -> point values and paired replicates per benchmark (:func:`estimates`) -> the macro row ->
the accuracy table with gains (:func:`accuracy_table`) -> RGR with intervals (:func:`rgr_table`) -> a
:class:`~w2sr.evaluation.report_records.Report`.

* **Macro rows** — the unweighted mean of the per-benchmark rows over the benchmarks **every** run has
  (``macro_benchmarks``); the others are named under ``macro_left_out`` with the runs that lack them. Each run's
  macro interval averages its per-benchmark bootstrap replicates (benchmarks independent, each resampled with
  ``benchmark_seed(seed, name)``), as ``w2sr.evaluation.metrics`` describes.
* **Paired intervals** — per benchmark, one resample of the problem ids all runs share is used for every run, so a
  gain's interval is that of the per-problem differences. RGR = (acc - base) / (ref - base) is null, with the reason
  under ``rgr_notes`` ("undefined"), when the reference gains at most ``min_gap`` or when the 95% interval of the
  reference's own gain contains zero.

Per-problem scores come from ``problem_scores`` in results.json (``w2sr evaluate``), else from the
``predictions.jsonl`` beside it; without either a run keeps its point numbers but gets no paired interval (said under
``notes``). Exercised by ``pytest tests/evaluation/test_report_compare.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from w2sr.evaluation.metrics import DEFAULT_RESAMPLES
from w2sr.evaluation.report_records import Bootstrap, Cell, Report, RunSummary, SeedGroup, SeedGroups
from w2sr.evaluation.rgr import MIN_GAP, MISSING, interval, ratio_interval, rgr
from w2sr.evaluation.runs import Arm, Run, accuracy
from w2sr.evaluation.seeds import POOLING, Draws, draw, seed_count, seed_draws, seed_rgr, seed_stats
from w2sr.evaluation.settings import check_settings, refuse_mismatches
from w2sr.records.jsonl import InputError

__all__ = ["MACRO", "MIN_GAP", "MISSING", "build_report", "interval", "paired_replicates", "rgr"]

MACRO = "macro"


def paired_replicates(
    runs: list[Run], bench: str, metric: str, seed: int, resamples: int = DEFAULT_RESAMPLES
) -> tuple[dict[str, np.ndarray], int]:
    """``({run: replicate means}, problems)``: every run with per-problem scores, on ONE resample (seeded by
    ``benchmark_seed(seed, bench)``) of the problem ids those runs share, in the first such run's order."""
    found = draw([Arm(r.name, [r]) for r in runs], bench, metric, seed, resamples, np.zeros((resamples, 1), int))
    return found.pooled, found.problems


# ------------------------------------------------------------------------------------------------- the steps
@dataclass
class Coverage:
    """Which benchmarks the runs have: all of them (first seen first), those every run has, and who lacks the rest."""

    union: list[str]
    shared: list[str]
    left_out: dict[str, list[str]]


@dataclass
class Estimates:
    """Per benchmark (and the macro row): each run's point value (a seed group: the mean over seeds) and its value
    per seed, its replicates (pooled over seeds, and per seed position), the problems the runs share."""

    keys: list[str]
    points: dict[str, dict[str, float | None]]
    per_seed: dict[str, dict[str, list[float | None]]]
    draws: dict[str, Draws]
    paired: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def replicates(self, bench: str) -> dict[str, np.ndarray]:
        return self.draws[bench].pooled


@dataclass
class RGRTable:
    """``{run: {benchmark: ...}}`` of RGR values, their intervals and why a value is null."""

    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    intervals: dict[str, dict[str, list[float] | None]] = field(default_factory=dict)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)


def check_unique_names(arms: list[Arm]) -> None:
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise InputError(f"two runs share a name: {names}; name them with name=path", field="runs")


def arm_accuracy(arm: Arm, bench: str, metric: str) -> list[float | None]:
    """The metric on one benchmark, seed by seed."""
    return [accuracy(run, bench, metric)[0] for run in arm.runs]


def coverage(arms: list[Arm], metric: str) -> Coverage:
    union: list[str] = []
    for run in (run for arm in arms for run in arm.runs):
        union += [b for b in run.results["benchmarks"] if b not in union]
    has = {b: [a.name for a in arms if None not in arm_accuracy(a, b, metric)] for b in union}
    shared = [b for b in union if len(has[b]) == len(arms)]
    left_out = {b: [a.name for a in arms if a.name not in has[b]] for b in union if b not in shared}
    return Coverage(union, shared, left_out)


def estimates(arms: list[Arm], cover: Coverage, metric: str, seed: int, resamples: int) -> Estimates:
    """Point values from results.json and paired replicates from the per-problem scores, per benchmark."""
    per_seed = {b: {a.name: arm_accuracy(a, b, metric) for a in arms} for b in cover.union}
    points = {b: {n: None if None in v else float(np.mean(v)) for n, v in row.items()} for b, row in per_seed.items()}
    for bench, row in points.items():  # a single run's value exactly as its results.json has it
        row.update({a.name: per_seed[bench][a.name][0] for a in arms if a.seeds == 1})
    seed_index = seed_draws(seed, seed_count(arms), resamples)
    draws = {b: draw(arms, b, metric, seed, resamples, seed_index) for b in cover.union}
    found = Estimates(list(cover.union), points, per_seed, draws, {b: d.problems for b, d in draws.items()})
    for arm in arms:
        lacking = [b for b in cover.union if arm.name not in draws[b].pooled and points[b][arm.name] is not None]
        if lacking:
            found.notes.append(
                f"{arm.name} has no per-problem scores on {', '.join(lacking)} "
                "(results.json without problem_scores and no predictions.jsonl beside it): no paired intervals there"
            )
    return found


def add_macro(found: Estimates, arms: list[Arm], shared: list[str]) -> None:
    """The macro row: the mean over the shared benchmarks of each run's values and of its replicates."""
    if len(found.keys) < 2:
        return
    names = [a.name for a in arms]
    found.keys.append(MACRO)
    found.points[MACRO] = {n: float(np.mean([found.points[b][n] for b in shared])) if shared else None for n in names}
    found.per_seed[MACRO] = {
        a.name: [float(np.mean(v)) for v in zip(*(found.per_seed[b][a.name] for b in shared))] or [None] * a.seeds
        for a in arms
    }
    macro = Draws()
    for n in names:
        if shared and all(n in found.draws[b].pooled for b in shared):
            macro.pooled[n] = np.mean([found.draws[b].pooled[n] for b in shared], axis=0)
            macro.per_seed[n] = list(np.mean([found.draws[b].per_seed[n] for b in shared], axis=0))
    found.draws[MACRO] = macro


def accuracy_table(arms: list[Arm], base: Arm | None, found: Estimates, metric: str) -> dict[str, dict[str, Cell]]:
    """Every run's accuracy, interval, gain over the base and the gain's paired interval, per benchmark. A single
    run's interval is its results.json's; a seed group's and the macro row's are the report's own replicates'."""
    table: dict[str, dict[str, Cell]] = {}
    for bench in found.keys:
        reps = found.replicates(bench)
        table[bench] = {}
        for arm in arms:
            acc = found.points[bench][arm.name]
            if bench != MACRO and arm.seeds == 1:
                ci = accuracy(arm.runs[0], bench, metric)[1]
            else:
                ci = interval(reps.get(arm.name))
            gain = gain_ci = None
            if base and arm is not base and acc is not None and found.points[bench][base.name] is not None:
                gain = acc - found.points[bench][base.name]
                if arm.name in reps and base.name in reps:
                    gain_ci = interval(reps[arm.name] - reps[base.name])
            table[bench][arm.name] = Cell(acc, ci, gain, gain_ci)
    return table


def rgr_table(
    arms: list[Arm],
    base: Arm | None,
    reference: Arm | None,
    found: Estimates,
    table: dict[str, dict[str, Cell]],
    min_gap: float,
) -> RGRTable:
    """RGR of every run but the base and the reference, with its paired interval or the reason it is null."""
    out = RGRTable()
    if not (base and reference and base is not reference):
        return out
    for arm in arms:
        if arm is base or arm is reference:
            continue
        out.values[arm.name], out.intervals[arm.name], out.notes[arm.name] = {}, {}, {}
        for bench in found.keys:
            points, reps = found.points[bench], found.replicates(bench)
            ref_gain_ci = table[bench][reference.name].gain_ci95
            value, why = rgr(points[arm.name], points[base.name], points[reference.name], min_gap, ref_gain_ci)
            out.values[arm.name][bench] = value
            out.intervals[arm.name][bench] = None
            if why:
                out.notes[arm.name][bench] = why
            elif all(n in reps for n in (arm.name, base.name, reference.name)):
                out.intervals[arm.name][bench] = ratio_interval(reps[arm.name], reps[base.name], reps[reference.name])
    return out


def per_seed_rgr(
    arm: Arm, base: Arm, reference: Arm, found: Estimates, bench: str, min_gap: float
) -> list[tuple[float | None, str]]:
    """RGR of each seed against the base and reference of the same seed position (and why one is undefined)."""
    values, runs = found.per_seed[bench], found.draws[bench].per_seed
    out = []
    for p in range(arm.seeds):
        position = {a.name: values[a.name][p if a.seeds > 1 else 0] for a in (arm, base, reference)}
        ref_gain_ci = None
        if base.name in runs and reference.name in runs:
            ref_gain_ci = interval(runs[reference.name][p] - runs[base.name][p])
        out.append(rgr(position[arm.name], position[base.name], position[reference.name], min_gap, ref_gain_ci))
    return out


def seed_groups(
    arms: list[Arm], base: Arm | None, reference: Arm | None, found: Estimates, min_gap: float
) -> SeedGroups | None:
    """Mean ± sd, per-seed values, the pooled interval and per-seed RGR of every seed group (None: no group)."""
    groups = {}
    for arm in (a for a in arms if a.seeds > 1):
        stats = {
            b: seed_stats(found.per_seed[b][arm.name], interval(found.replicates(b).get(arm.name))) for b in found.keys
        }
        ratios = {}
        if base and reference and base is not reference and arm is not base and arm is not reference:
            ratios = {b: seed_rgr(per_seed_rgr(arm, base, reference, found, b, min_gap)) for b in found.keys}
        groups[arm.name] = SeedGroup([str(r.path) for r in arm.runs], stats, ratios)
    return SeedGroups(POOLING, groups) if groups else None


def run_summary(arm: Arm) -> RunSummary:
    r = arm.runs[0].results
    path = str(arm.runs[0].path) if arm.seeds == 1 else [str(run.path) for run in arm.runs]
    return RunSummary(arm.name, path, r.get("model"), r.get("adapter"), r.get("grader"), r.get("sampling"))


def as_arms(
    runs: Sequence[Run | Arm], base: Run | Arm | None, reference: Run | Arm | None
) -> tuple[list[Arm], Arm | None, Arm | None]:
    """Single runs as arms of one seed; the base and reference mapped onto the same objects (added when not among
    the runs)."""
    made = {id(r): r if isinstance(r, Arm) else Arm(r.name, [r]) for r in runs}
    for extra in (base, reference):
        if extra is not None and id(extra) not in made:
            made[id(extra)] = extra if isinstance(extra, Arm) else Arm(extra.name, [extra])
    return (
        list(made.values()),
        made.get(id(base)) if base is not None else None,
        made.get(id(reference)) if reference is not None else None,
    )


def build_report(
    runs: Sequence[Run | Arm],
    base: Run | Arm | None,
    reference: Run | Arm | None,
    metric: str = "avg@n",
    min_gap: float = MIN_GAP,
    allow_mismatch: bool = False,
    seed: int | None = None,
    resamples: int = DEFAULT_RESAMPLES,
) -> Report:
    """Every number of the report (see the module docstring for the steps)."""
    arms, base_arm, reference_arm = as_arms(runs, base, reference)
    check_unique_names(arms)
    seed_count(arms)  # seed groups of one size (paired by position), else InputError
    cover = coverage(arms, metric)
    mismatches, unchecked = check_settings(arms, cover.union)
    refuse_mismatches(mismatches, allow_mismatch)
    if seed is None:
        seed = int((base_arm or arms[0]).runs[0].results.get("seed") or 0)
    found = estimates(arms, cover, metric, seed, resamples)
    add_macro(found, arms, cover.shared)
    table = accuracy_table(arms, base_arm, found, metric)
    ratios = rgr_table(arms, base_arm, reference_arm, found, table, min_gap)
    macro = len(cover.union) > 1
    return Report(
        metric=metric,
        runs=[run_summary(a) for a in arms],
        base=base_arm.name if base_arm else None,
        reference=reference_arm.name if reference_arm else None,
        min_gap=min_gap,
        allow_mismatch=allow_mismatch,
        mismatches=mismatches,
        unchecked=unchecked,
        macro_benchmarks=cover.shared if macro else [],
        macro_left_out=cover.left_out if macro else {},
        bootstrap=Bootstrap(seed, resamples, found.paired),
        benchmarks=table,
        rgr=ratios.values,
        rgr_ci95=ratios.intervals,
        rgr_notes=ratios.notes,
        notes=found.notes,
        seed_groups=seed_groups(arms, base_arm, reference_arm, found, min_gap),
    )
