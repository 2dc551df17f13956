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

from dataclasses import dataclass, field

import numpy as np

from w2sr.evaluation.metrics import DEFAULT_RESAMPLES, benchmark_seed
from w2sr.evaluation.report_records import Bootstrap, Cell, Report, RunSummary
from w2sr.evaluation.runs import Run, accuracy, problem_values, run_scores
from w2sr.evaluation.settings import check_settings, refuse_mismatches
from w2sr.records.jsonl import InputError

MIN_GAP = 0.01  # the reference must beat the base by more than 1 point for RGR to be shown
MACRO = "macro"
MISSING = "a score is missing"


def rgr(
    acc: float | None,
    base: float | None,
    ref: float | None,
    min_gap: float = MIN_GAP,
    ref_gain_ci: list[float] | None = None,
) -> tuple[float | None, str]:
    """RGR and, when it is undefined, why."""
    if acc is None or base is None or ref is None:
        return None, MISSING
    if ref - base <= min_gap:
        return None, (
            f"undefined: the reference gains {100 * (ref - base):+.1f} points over the base "
            f"(<= {100 * min_gap:.0f}): the gap is too small for a ratio"
        )
    if ref_gain_ci is not None and ref_gain_ci[0] <= 0 <= ref_gain_ci[1]:
        return None, (
            f"undefined: the reference's gain over the base ({100 * (ref - base):+.1f} points) has a 95% "
            f"paired interval [{100 * ref_gain_ci[0]:+.1f}, {100 * ref_gain_ci[1]:+.1f}] that contains "
            "zero"
        )
    return (acc - base) / (ref - base), ""


def interval(replicates: np.ndarray | None) -> list[float] | None:
    """The 95% percentile interval of the finite replicates (None when there are none)."""
    if replicates is None:
        return None
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return None
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [float(lo), float(hi)]


def paired_replicates(
    runs: list[Run], bench: str, metric: str, seed: int, resamples: int = DEFAULT_RESAMPLES
) -> tuple[dict[str, np.ndarray], int]:
    """``({run: replicate means}, problems)``: every run with per-problem scores, on ONE resample (seeded by
    ``benchmark_seed(seed, bench)``) of the problem ids those runs share, in the first such run's order."""
    values = {r.name: v for r in runs if (v := problem_values(run_scores(r).get(bench), metric)) is not None}
    if not values:
        return {}, 0
    shared_set = set.intersection(*(set(v) for v in values.values()))
    shared = [pid for pid in next(iter(values.values())) if pid in shared_set]
    if not shared:
        return {}, 0
    rng = np.random.default_rng(benchmark_seed(seed, bench))
    index = rng.integers(0, len(shared), size=(resamples, len(shared)))
    return {
        name: np.asarray([v[pid] for pid in shared], dtype=float)[index].mean(axis=1) for name, v in values.items()
    }, len(shared)


# ------------------------------------------------------------------------------------------------- the steps
@dataclass
class Coverage:
    """Which benchmarks the runs have: all of them (first seen first), those every run has, and who lacks the rest."""

    union: list[str]
    shared: list[str]
    left_out: dict[str, list[str]]


@dataclass
class Estimates:
    """Per benchmark (and the macro row): each run's point value, its paired replicates, the shared problems."""

    keys: list[str]
    points: dict[str, dict[str, float | None]]
    replicates: dict[str, dict[str, np.ndarray]]
    paired: dict[str, int]
    notes: list[str] = field(default_factory=list)


@dataclass
class RGRTable:
    """``{run: {benchmark: ...}}`` of RGR values, their intervals and why a value is null."""

    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    intervals: dict[str, dict[str, list[float] | None]] = field(default_factory=dict)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)


def check_unique_names(runs: list[Run]) -> None:
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise InputError(f"two runs share a name: {names}; name them with name=path", field="runs")


def coverage(runs: list[Run], metric: str) -> Coverage:
    union: list[str] = []
    for run in runs:
        union += [b for b in run.results["benchmarks"] if b not in union]
    has = {b: [r.name for r in runs if accuracy(r, b, metric)[0] is not None] for b in union}
    shared = [b for b in union if len(has[b]) == len(runs)]
    left_out = {b: [r.name for r in runs if r.name not in has[b]] for b in union if b not in shared}
    return Coverage(union, shared, left_out)


def estimates(runs: list[Run], cover: Coverage, metric: str, seed: int, resamples: int) -> Estimates:
    """Point values from results.json and paired replicates from the per-problem scores, per benchmark."""
    points = {b: {r.name: accuracy(r, b, metric)[0] for r in runs} for b in cover.union}
    replicates: dict[str, dict[str, np.ndarray]] = {}
    paired: dict[str, int] = {}
    for bench in cover.union:
        replicates[bench], paired[bench] = paired_replicates(runs, bench, metric, seed, resamples)
    found = Estimates(list(cover.union), points, replicates, paired)
    for run in runs:
        lacking = [b for b in cover.union if run.name not in replicates[b] and points[b][run.name] is not None]
        if lacking:
            found.notes.append(
                f"{run.name} has no per-problem scores on {', '.join(lacking)} "
                "(results.json without problem_scores and no predictions.jsonl beside it): no paired intervals there"
            )
    return found


def add_macro(found: Estimates, runs: list[Run], shared: list[str]) -> None:
    """The macro row: the mean over the shared benchmarks of each run's values and of its replicates."""
    if len(found.keys) < 2:
        return
    names = [r.name for r in runs]
    found.keys.append(MACRO)
    found.points[MACRO] = {n: float(np.mean([found.points[b][n] for b in shared])) if shared else None for n in names}
    found.replicates[MACRO] = {
        n: np.mean([found.replicates[b][n] for b in shared], axis=0)
        for n in names
        if shared and all(n in found.replicates[b] for b in shared)
    }


def accuracy_table(runs: list[Run], base: Run | None, found: Estimates, metric: str) -> dict[str, dict[str, Cell]]:
    """Every run's accuracy, interval, gain over the base and the gain's paired interval, per benchmark."""
    table: dict[str, dict[str, Cell]] = {}
    for bench in found.keys:
        reps = found.replicates[bench]
        table[bench] = {}
        for run in runs:
            acc = found.points[bench][run.name]
            ci = accuracy(run, bench, metric)[1] if bench != MACRO else interval(reps.get(run.name))
            gain = gain_ci = None
            if base and run is not base and acc is not None and found.points[bench][base.name] is not None:
                gain = acc - found.points[bench][base.name]
                if run.name in reps and base.name in reps:
                    gain_ci = interval(reps[run.name] - reps[base.name])
            table[bench][run.name] = Cell(acc, ci, gain, gain_ci)
    return table


def rgr_table(
    runs: list[Run],
    base: Run | None,
    reference: Run | None,
    found: Estimates,
    table: dict[str, dict[str, Cell]],
    min_gap: float,
) -> RGRTable:
    """RGR of every run but the base and the reference, with its paired interval or the reason it is null."""
    out = RGRTable()
    if not (base and reference and base is not reference):
        return out
    for run in runs:
        if run in (base, reference):
            continue
        out.values[run.name], out.intervals[run.name], out.notes[run.name] = {}, {}, {}
        for bench in found.keys:
            points, reps = found.points[bench], found.replicates[bench]
            value, why = rgr(
                points[run.name],
                points[base.name],
                points[reference.name],
                min_gap,
                table[bench][reference.name].gain_ci95,
            )
            out.values[run.name][bench] = value
            out.intervals[run.name][bench] = None
            if why:
                out.notes[run.name][bench] = why
            elif all(n in reps for n in (run.name, base.name, reference.name)):
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = (reps[run.name] - reps[base.name]) / (reps[reference.name] - reps[base.name])
                out.intervals[run.name][bench] = interval(ratio)
    return out


def run_summary(run: Run) -> RunSummary:
    r = run.results
    return RunSummary(run.name, str(run.path), r.get("model"), r.get("adapter"), r.get("grader"), r.get("sampling"))


def build_report(
    runs: list[Run],
    base: Run | None,
    reference: Run | None,
    metric: str = "avg@n",
    min_gap: float = MIN_GAP,
    allow_mismatch: bool = False,
    seed: int | None = None,
    resamples: int = DEFAULT_RESAMPLES,
) -> Report:
    """Every number of the report (see the module docstring for the steps)."""
    check_unique_names(runs)
    cover = coverage(runs, metric)
    mismatches, unchecked = check_settings(runs, cover.union)
    refuse_mismatches(mismatches, allow_mismatch)
    if seed is None:
        seed = int((base or runs[0]).results.get("seed") or 0)
    found = estimates(runs, cover, metric, seed, resamples)
    add_macro(found, runs, cover.shared)
    table = accuracy_table(runs, base, found, metric)
    ratios = rgr_table(runs, base, reference, found, table, min_gap)
    macro = len(cover.union) > 1
    return Report(
        metric=metric,
        runs=[run_summary(r) for r in runs],
        base=base.name if base else None,
        reference=reference.name if reference else None,
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
    )
