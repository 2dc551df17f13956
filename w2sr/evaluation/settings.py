"""Whether the runs ``w2sr report`` compares were evaluated alike: the settings they must share, and the line that
describes a difference.

Compared runs must share the grader, the prompt (template and messages), the quantization of the evaluated base
(``none`` / ``nf4``: a QLoRA student scored on its NF4 base against bf16 runs is refused), the sampling (every field
but ``seed`` and ``batch_size``, which change the draw, not the method) and each benchmark's problem ids. A
difference is a :class:`~w2sr.evaluation.report_records.Mismatch`; :func:`refuse_mismatches` raises
:class:`InputError` (exit 2) unless ``allow_mismatch``, and the report then flags it (with what the difference does,
where :data:`CONSEQUENCE` says). A setting a run does not record (score-only runs have no
sampling) is listed as unchecked, not refused. Exercised by ``pytest tests/evaluation/test_report_compare.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from w2sr.evaluation.report_records import IdMismatch, Mismatch
from w2sr.evaluation.runs import Arm, Run, problem_values, run_scores
from w2sr.records.jsonl import InputError

SAMPLING_IGNORED = ("seed", "batch_size")


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _sampling(run: Run, bench: str) -> dict[str, Any] | None:
    value = (run.results["benchmarks"].get(bench) or {}).get("sampling") or run.results.get("sampling")
    if isinstance(value, dict) and isinstance(value.get(bench), dict):
        value = value[bench]
    if not isinstance(value, dict):
        return None
    return {k: v for k, v in sorted(value.items()) if k not in SAMPLING_IGNORED}


class SettingsCheck:
    """Collects the mismatches and the unchecked settings of one set of runs."""

    def __init__(self) -> None:
        self.mismatches: list[Mismatch] = []
        self.unchecked: list[str] = []

    def compare(self, name: str, values: dict[str, Any], bench: str | None = None) -> None:
        """One setting, ``{run: value}`` (None: not recorded by that run)."""
        where = f" on {bench}" if bench else ""
        absent = [run for run, value in values.items() if value is None]
        known = {run: value for run, value in values.items() if value is not None}
        if absent and len(values) > 1:
            self.unchecked.append(f"{name}{where}: not recorded by {', '.join(absent)}")
        if len({_key(v) for v in known.values()}) > 1:
            if isinstance(next(iter(known.values())), dict):  # show only the fields that differ
                differ = sorted(
                    {k for v in known.values() for k in v if len({_key(o.get(k)) for o in known.values()}) > 1}
                )
                known = {run: {k: v.get(k) for k in differ} for run, v in known.items()}
            self.mismatches.append(Mismatch(name, bench, known))

    def compare_problem_ids(self, runs: Sequence[Run], bench: str) -> None:
        """The problems each run scored on one benchmark (runs without per-problem scores are not compared)."""
        ids = {r.name: problem_values(run_scores(r).get(bench), "avg@n") for r in runs}
        known = {name: set(v) for name, v in ids.items() if v is not None}
        if len({frozenset(v) for v in known.values()}) > 1:
            odd = sorted(set.union(*known.values()) - set.intersection(*known.values()))
            found = IdMismatch(
                "problem_ids",
                bench,
                {name: f"{len(v)} scored problems" for name, v in known.items()},
                odd[:10] + ([f"... {len(odd) - 10} more"] if len(odd) > 10 else []),
            )
            if found not in self.mismatches:  # the same runs at another seed position
                self.mismatches.append(found)


def seed_runs(arms: Sequence[Arm]) -> list[Run]:
    """Every run of every arm, a seed group's named ``name[i]`` (copies: the arms keep their names)."""
    return [
        run if arm.seeds == 1 else Run(f"{arm.name}[{i}]", run.path, run.results, run.scores)
        for arm in arms
        for i, run in enumerate(arm.runs)
    ]


def check_settings(arms: Sequence[Arm], benchmarks: list[str]) -> tuple[list[Mismatch], list[str]]:
    """``(mismatches, unchecked)``: the settings the runs differ in, and those some run does not record. Every seed
    of a group is checked; problem ids are compared between the runs of the same seed position (a seed group's
    seeds may hold different held-out problems)."""
    check = SettingsCheck()
    runs = seed_runs(arms)
    check.compare("grader", {r.name: r.results.get("grader") for r in runs})
    check.compare("prompt", {r.name: r.results.get("prompt") for r in runs})
    check.compare("quantization", {r.name: r.results.get("quantization") for r in runs})
    seeds = max((arm.seeds for arm in arms), default=1)
    for bench in benchmarks:
        having = [r for r in runs if bench in r.results["benchmarks"]]
        if len(having) < 2:
            continue
        check.compare("sampling", {r.name: _sampling(r, bench) for r in having}, bench)
        for position in range(seeds):
            at = [run for arm in arms if bench in (run := arm.at(position)).results["benchmarks"]]
            if len(at) > 1:
                check.compare_problem_ids(at, bench)
    return check.mismatches, check.unchecked


# what a difference in a setting does to the numbers, said beside it
CONSEQUENCE = {
    "quantization": "a model evaluated on a 4-bit (NF4) base is not the same model as on its 16-bit weights: part "
    "of any gap between these runs is the quantization, not the training",
}


def describe(mismatch: Mismatch) -> str:
    """One line for a mismatch: ``sampling on math500 (base: {...}; rl: {...})``."""
    where = f" on {mismatch.benchmark}" if mismatch.benchmark else ""
    values = "; ".join(
        f"{run}: {_key(value) if isinstance(value, dict) else value}" for run, value in mismatch.values.items()
    )
    odd = f"; ids not in every run: {', '.join(mismatch.not_in_every_run)}" if isinstance(mismatch, IdMismatch) else ""
    why = f": {CONSEQUENCE[mismatch.field]}" if mismatch.field in CONSEQUENCE else ""
    return f"{mismatch.field}{where} ({values}{odd}){why}"


def refuse_mismatches(mismatches: list[Mismatch], allow_mismatch: bool) -> None:
    """Raise :class:`InputError` (exit 2) naming every difference, unless the comparison is allowed."""
    if mismatches and not allow_mismatch:
        raise InputError(
            "the runs were not evaluated alike: "
            + "; ".join(describe(m) for m in mismatches)
            + ". Pass --allow_mismatch true to compare them anyway (flagged in report.md and report.json)",
            field="runs",
        )
