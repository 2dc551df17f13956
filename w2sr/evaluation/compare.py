"""The numbers of ``w2sr report``: which benchmarks and settings the compared runs share, macro rows, and gains and
RGR with paired bootstrap intervals over problems.

* **Settings** — compared runs must share the grader, the prompt (template and messages), the sampling (every field
  but ``seed`` and ``batch_size``, which change the draw, not the method) and each benchmark's problem ids. A
  difference raises :class:`InputError` (exit 2) unless ``allow_mismatch``; then it is listed under ``mismatches``
  and flagged in report.md. A setting a run does not record (score-only runs have no sampling) is listed under
  ``unchecked``, not refused.
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

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from w2sr.evaluation.metrics import DEFAULT_RESAMPLES, ProblemSamples, benchmark_seed, problem_scores
from w2sr.records.jsonl import InputError, iter_jsonl

MIN_GAP = 0.01  # the reference must beat the base by more than 1 point for RGR to be shown
MACRO = "macro"
MISSING = "a score is missing"
SAMPLING_IGNORED = ("seed", "batch_size")


@dataclass
class Run:
    """One results.json with the name it is shown under (per-problem scores are read once, when first needed)."""

    name: str
    path: Path
    results: dict[str, Any]
    scores: dict[str, Any] | None = field(default=None, repr=False)


def run_scores(run: Run) -> dict[str, Any]:
    """``{benchmark: problem_scores}`` from results.json, else from the predictions.jsonl beside it (None: neither)."""
    if run.scores is None:
        run.scores = {b: row.get("problem_scores") for b, row in run.results["benchmarks"].items()}
        predictions = run.path.parent / "predictions.jsonl"
        if not all(run.scores.values()) and predictions.is_file():
            found = _scores_from_predictions(predictions, run.results)
            run.scores.update({b: found.get(b) for b, v in run.scores.items() if not v})
    return run.scores


def _scores_from_predictions(path: Path, results: dict[str, Any]) -> dict[str, Any]:
    id_field = (results.get("verify") or {}).get("id_field", "id")
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for _, record in iter_jsonl(path):
        grouped.setdefault(str(record.get("benchmark")), {}).setdefault(str(record.get(id_field)), []).append(record)
    out = {}
    for bench, problems in grouped.items():
        rows = []
        for pid, samples in problems.items():
            if all(isinstance(s.get("sample"), int) for s in samples):
                samples.sort(key=lambda s: s["sample"])
            rows.append(
                ProblemSamples(pid, [s.get("correct") for s in samples], [s.get("answer_class") for s in samples])
            )
        out[bench] = problem_scores(rows)
    return out


def problem_values(scores: dict[str, Any] | None, metric: str) -> dict[str, float] | None:
    """``{problem id: score}`` of one metric (``avg@n``, ``pass@K``, ``maj@K``) from a ``problem_scores`` entry."""
    if not scores:
        return None
    if metric == "avg@n":
        values = scores.get("avg@n")
    else:
        family, _, k = metric.partition("@")
        values = (scores.get(f"{family}@k") or {}).get(k)
    return None if values is None else dict(zip(map(str, scores["ids"]), values))


def accuracy(run: Run, benchmark: str, metric: str = "avg@n") -> tuple[float | None, list[float] | None]:
    """A run's accuracy and interval on one benchmark, as its results.json has them."""
    row = run.results["benchmarks"].get(benchmark)
    if not row:
        return None, None
    if metric == "avg@n":
        return row.get("avg@n"), row.get("ci95")
    family, _, k = metric.partition("@")
    return (row.get(f"{family}@k") or {}).get(k), None


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


# ------------------------------------------------------------------------------------------------- settings
def _sampling(run: Run, bench: str) -> dict[str, Any] | None:
    value = (run.results["benchmarks"].get(bench) or {}).get("sampling") or run.results.get("sampling")
    if isinstance(value, dict) and isinstance(value.get(bench), dict):
        value = value[bench]
    if not isinstance(value, dict):
        return None
    return {k: v for k, v in sorted(value.items()) if k not in SAMPLING_IGNORED}


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def check_settings(runs: list[Run], benchmarks: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """``(mismatches, unchecked)``: the settings the runs differ in, and those some run does not record."""
    mismatches: list[dict[str, Any]] = []
    unchecked: list[str] = []

    def compare(name: str, values: dict[str, Any], bench: str | None = None) -> None:
        where = f" on {bench}" if bench else ""
        absent = [run for run, value in values.items() if value is None]
        known = {run: value for run, value in values.items() if value is not None}
        if absent and len(values) > 1:
            unchecked.append(f"{name}{where}: not recorded by {', '.join(absent)}")
        if len({_key(v) for v in known.values()}) > 1:
            if isinstance(next(iter(known.values())), dict):  # show only the fields that differ
                fields = sorted(
                    {k for v in known.values() for k in v if len({_key(o.get(k)) for o in known.values()}) > 1}
                )
                known = {run: {k: v.get(k) for k in fields} for run, v in known.items()}
            mismatches.append({"field": name, "benchmark": bench, "values": known})

    compare("grader", {r.name: r.results.get("grader") for r in runs})
    compare("prompt", {r.name: r.results.get("prompt") for r in runs})
    for bench in benchmarks:
        having = [r for r in runs if bench in r.results["benchmarks"]]
        if len(having) < 2:
            continue
        compare("sampling", {r.name: _sampling(r, bench) for r in having}, bench)
        ids = {r.name: problem_values(run_scores(r).get(bench), "avg@n") for r in having}
        known = {name: set(v) for name, v in ids.items() if v is not None}
        if len({frozenset(v) for v in known.values()}) > 1:
            odd = sorted(set.union(*known.values()) - set.intersection(*known.values()))
            mismatches.append(
                {
                    "field": "problem_ids",
                    "benchmark": bench,
                    "values": {name: f"{len(v)} scored problems" for name, v in known.items()},
                    "not_in_every_run": odd[:10] + ([f"... {len(odd) - 10} more"] if len(odd) > 10 else []),
                }
            )
    return mismatches, unchecked


def describe(mismatch: dict[str, Any]) -> str:
    """One line for a mismatch: ``sampling on math500 (base: {...}; rl: {...})``."""
    where = f" on {mismatch['benchmark']}" if mismatch.get("benchmark") else ""
    values = "; ".join(
        f"{run}: {_key(value) if isinstance(value, dict) else value}" for run, value in mismatch["values"].items()
    )
    odd = f"; ids not in every run: {', '.join(mismatch['not_in_every_run'])}" if "not_in_every_run" in mismatch else ""
    return f"{mismatch['field']}{where} ({values}{odd})"


# ------------------------------------------------------------------------------------------------- statistics
def _interval(replicates: np.ndarray | None) -> list[float] | None:
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


def build_report(
    runs: list[Run],
    base: Run | None,
    reference: Run | None,
    metric: str = "avg@n",
    min_gap: float = MIN_GAP,
    allow_mismatch: bool = False,
    seed: int | None = None,
    resamples: int = DEFAULT_RESAMPLES,
) -> dict[str, Any]:
    """Every number of the report as one JSON-ready dict (see the module docstring)."""
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise InputError(f"two runs share a name: {names}; name them with name=path", field="runs")
    union: list[str] = []
    for run in runs:
        union += [b for b in run.results["benchmarks"] if b not in union]
    has = {b: [r.name for r in runs if accuracy(r, b, metric)[0] is not None] for b in union}
    shared = [b for b in union if len(has[b]) == len(runs)]
    left_out = {b: [n for n in names if n not in has[b]] for b in union if b not in shared}
    mismatches, unchecked = check_settings(runs, union)
    if mismatches and not allow_mismatch:
        raise InputError(
            "the runs were not evaluated alike: "
            + "; ".join(describe(m) for m in mismatches)
            + ". Pass --allow_mismatch true to compare them anyway (flagged in report.md and report.json)",
            field="runs",
        )
    if seed is None:
        seed = int((base or runs[0]).results.get("seed") or 0)
    points: dict[str, dict[str, float | None]] = {b: {r.name: accuracy(r, b, metric)[0] for r in runs} for b in union}
    reps: dict[str, dict[str, np.ndarray]] = {}
    paired: dict[str, int] = {}
    for bench in union:
        reps[bench], paired[bench] = paired_replicates(runs, bench, metric, seed, resamples)
    notes = [
        f"{r.name} has no per-problem scores on "
        f"{', '.join(b for b in union if r.name not in reps[b] and r.name in has[b])} "
        "(results.json without problem_scores and no predictions.jsonl beside it): no paired intervals there"
        for r in runs
        if any(r.name not in reps[b] and r.name in has[b] for b in union)
    ]
    keys = list(union)
    if len(union) > 1:
        keys.append(MACRO)
        points[MACRO] = {n: float(np.mean([points[b][n] for b in shared])) if shared else None for n in names}
        reps[MACRO] = {
            n: np.mean([reps[b][n] for b in shared], axis=0)
            for n in names
            if shared and all(n in reps[b] for b in shared)
        }
    table: dict[str, dict[str, Any]] = {}
    for bench in keys:
        table[bench] = {}
        for run in runs:
            acc = points[bench][run.name]
            ci = accuracy(run, bench, metric)[1] if bench != MACRO else _interval(reps[bench].get(run.name))
            gain = gain_ci = None
            if base and run is not base and acc is not None and points[bench][base.name] is not None:
                gain = acc - points[bench][base.name]
                if run.name in reps[bench] and base.name in reps[bench]:
                    gain_ci = _interval(reps[bench][run.name] - reps[bench][base.name])
            table[bench][run.name] = {"accuracy": acc, "ci95": ci, "gain": gain, "gain_ci95": gain_ci}
    scores: dict[str, dict[str, float | None]] = {}
    intervals: dict[str, dict[str, list[float] | None]] = {}
    why_null: dict[str, dict[str, str]] = {}
    if base and reference and base is not reference:
        for run in runs:
            if run in (base, reference):
                continue
            scores[run.name], intervals[run.name], why_null[run.name] = {}, {}, {}
            for bench in keys:
                value, why = rgr(
                    points[bench][run.name],
                    points[bench][base.name],
                    points[bench][reference.name],
                    min_gap,
                    table[bench][reference.name]["gain_ci95"],
                )
                scores[run.name][bench] = value
                intervals[run.name][bench] = None
                if why:
                    why_null[run.name][bench] = why
                elif all(n in reps[bench] for n in (run.name, base.name, reference.name)):
                    with np.errstate(divide="ignore", invalid="ignore"):
                        ratio = (reps[bench][run.name] - reps[bench][base.name]) / (
                            reps[bench][reference.name] - reps[bench][base.name]
                        )
                    intervals[run.name][bench] = _interval(ratio)
    return {
        "metric": metric,
        "runs": [
            {
                "name": r.name,
                "results": str(r.path),
                "model": r.results.get("model"),
                "adapter": r.results.get("adapter"),
                "grader": r.results.get("grader"),
                "sampling": r.results.get("sampling"),
            }
            for r in runs
        ],
        "base": base.name if base else None,
        "reference": reference.name if reference else None,
        "min_gap": min_gap,
        "allow_mismatch": allow_mismatch,
        "mismatches": mismatches,
        "unchecked": unchecked,
        "macro_benchmarks": shared if len(union) > 1 else [],
        "macro_left_out": left_out if len(union) > 1 else {},
        "bootstrap": {"seed": seed, "resamples": resamples, "paired_problems": paired},
        "benchmarks": table,
        "rgr": scores,
        "rgr_ci95": intervals,
        "rgr_notes": why_null,
        "notes": notes,
    }
