"""Report: compare evaluation runs per benchmark, with gains over a base model and the Reasoning Gap Recovered.

``w2sr report --runs [base=runs/eval-base/results.json,w2sr=runs/eval-w2sr/results.json,rl=...] --base base
--reference rl --output_dir runs/report`` writes

* ``report.md`` — a per-benchmark table of accuracies (``avg@n``, i.e. pass@1, with 95% intervals), gains over
  the base in points with their paired 95% intervals, and RGR = (acc - acc_base) / (acc_ref - acc_base) for every
  other run; the macro row is over the benchmarks every run has, and the ones left out are named;
* ``report.json`` — the same numbers (RGR under ``rgr``: ``{run: {benchmark: value or null}}``, its interval under
  ``rgr_ci95``, the reason for each null under ``rgr_notes``; ``macro_benchmarks``, ``macro_left_out``,
  ``mismatches``; see :mod:`w2sr.evaluation.compare`, which computes them);
* ``report.png`` — grouped bars per benchmark with the intervals, and, given ``--fit_runs DIR`` (a fit run's folder,
  logged by Lightning's CSV, TensorBoard, MLflow or offline W&B logger; see :mod:`w2sr.evaluation.fit_curves`),
  ``val/reasoning_acc``, ``train/loss`` and ``val/loss`` over steps, each empty panel saying why.

Runs evaluated with another grader, prompt, sampling or problem set are refused (exit 2) unless
``--allow_mismatch true``, which compares them under a warning. RGR is undefined, with the reason, when the
reference gains at most ``min_gap`` (1 point) over the base or its paired interval contains zero. Runs are named
``name=path``, else by their folder, else by their ``model``. ``python -m w2sr.report`` is an alias taking the same
options. Exercised by ``make quickstart`` and ``pytest tests/evaluation/test_report.py``.

This module loads, writes and prints; the parts live beside it: :mod:`~w2sr.evaluation.runs` (the results files),
:mod:`~w2sr.evaluation.settings` (evaluated alike?), :mod:`~w2sr.evaluation.compare` (the numbers),
:mod:`~w2sr.evaluation.report_records` (the dataclasses whose ``asdict`` is report.json),
:mod:`~w2sr.evaluation.report_text` (report.md, the terminal), :mod:`~w2sr.evaluation.report_plot` (report.png) and
:mod:`~w2sr.evaluation.fit_curves` (the training curves).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from w2sr.evaluation.compare import MACRO, MIN_GAP, build_report, rgr
from w2sr.evaluation.cost import arm_costs
from w2sr.evaluation.fit_curves import read_fit_metrics, read_fit_run
from w2sr.evaluation.report_plot import plot
from w2sr.evaluation.report_records import FitSource, Report, Teacher
from w2sr.evaluation.report_request import ReportRequest
from w2sr.evaluation.report_text import comparison_table, markdown, print_summary, warnings
from w2sr.evaluation.runs import Arm, Run, accuracy, load_results, parse_arm, parse_run, resolve_arm, split_run_specs
from w2sr.records.jsonl import InputError, atomic_open, check_output
from w2sr.runtime.command_line import parse_request

__all__ = [
    "MACRO",
    "MIN_GAP",
    "Report",
    "Run",
    "accuracy",
    "build_report",
    "comparison_table",
    "rgr",
    "load_results",
    "parse_run",
    "markdown",
    "make_report",
    "write_report",
    "ReportRequest",
    "main",
    "plot",
    "read_fit_metrics",
    "warnings",
]


def read_teacher(path: str | Path) -> Teacher:
    """The teacher traces' accuracy from a ``w2sr verify --summary`` file."""
    path = Path(path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read the verification summary ({err})", path=path) from None
    if "accuracy" not in summary:
        raise InputError("missing required field", path=path, field="accuracy")
    return Teacher(str(path), summary["accuracy"], summary.get("records"))


def load_runs(runs: Sequence[str], base: str | None, reference: str | None) -> tuple[list[Arm], Arm | None, Arm | None]:
    """The runs (and seed groups) in the order given, and the base and reference among them (added when given as
    another file or group)."""
    specs = split_run_specs(runs)
    if not specs:
        raise InputError("give at least one results.json", field="runs")
    loaded = [parse_arm(spec) for spec in specs]
    base_arm = resolve_arm(base, loaded, "base")
    reference_arm = resolve_arm(reference, loaded, "reference")
    if reference_arm and not base_arm:
        raise InputError("--reference needs --base (RGR is measured from the base)", field="base")
    return loaded, base_arm, reference_arm


def _named(spec: str) -> tuple[str, str, str]:
    """``name=path`` -> (name, "=", path); a bare path -> ("", "", path)."""
    name, sep, path = spec.partition("=")
    return (name, sep, path) if sep else ("", "", spec)


def add_fit_curves(report: Report, fit_runs: Sequence[str]) -> None:
    """Read each fit run's curves (whichever logger wrote them) into the report, with why an empty one is empty."""
    if not fit_runs:
        return
    runs = [read_fit_run(path, name or None) for name, _, path in (_named(spec) for spec in fit_runs)]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise InputError(f"two fit runs share a name: {names}; name them with name=path", field="fit_runs")
    report.fit_runs = {r.name: {k: [list(p) for p in v] for k, v in r.curves.items()} for r in runs}
    report.fit_sources = {r.name: FitSource(r.logger, str(r.source)) for r in runs}
    report.fit_notes = {r.name: r.notes for r in runs if r.notes} or None


def add_costs(report: Report, fit_runs: Sequence[str], teacher: str | None, cards: Sequence[str]) -> None:
    """The cost of each arm from the fit runs' ``cost.json``, the teacher's verify summary and generation cards
    (:func:`w2sr.evaluation.cost.arm_costs`); nothing when no fit run recorded one."""
    if not fit_runs and not cards:
        return
    costs = arm_costs([_named(spec)[2] for spec in fit_runs], teacher=teacher, cards=list(cards))
    if costs.arms:
        report.arm_costs = costs


def write_files(report: Report, outputs: list[Path], overwrite: bool) -> None:
    """report.md, report.json and report.png, each written atomically."""
    outputs[0].parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(outputs[0], overwrite) as handle:
        handle.write(markdown(report))
    with atomic_open(outputs[1], overwrite) as handle:
        json.dump(report.to_json(), handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    plot(report, outputs[2])


def write_report(request: ReportRequest, console: Console | None = None) -> dict[str, Any]:
    """``w2sr report``: load the runs, write report.md / report.json / report.png into ``output_dir``; return
    report.json's content."""
    output_dir = Path(request.output_dir)
    outputs = [check_output(output_dir / n, request.overwrite) for n in ("report.md", "report.json", "report.png")]
    loaded, base_run, reference_run = load_runs(request.runs, request.base, request.reference)
    report = build_report(
        loaded, base_run, reference_run, request.metric, request.min_gap, allow_mismatch=request.allow_mismatch
    )
    add_fit_curves(report, request.fit_runs)
    report.teacher = read_teacher(request.teacher) if request.teacher else None
    add_costs(report, request.fit_runs, request.teacher, request.cards)
    write_files(report, outputs, request.overwrite)
    print_summary(report, console or Console(), [str(p) for p in outputs])
    return report.to_json()


def make_report(
    runs: Sequence[str], output_dir: str | Path, *, console: Console | None = None, **options: Any
) -> dict[str, Any]:
    """:func:`write_report` from Python: ``make_report(["a/results.json", "b"], "out", base="a")``; ``options`` are
    the other fields of :class:`ReportRequest`."""
    return write_report(ReportRequest(runs=list(runs), output_dir=str(output_dir), **options), console)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m w2sr.report``: the options of ``w2sr report`` (one :class:`ReportRequest`), without Lightning."""
    try:
        write_report(parse_request(ReportRequest, argv, "python -m w2sr.report", __doc__.splitlines()[0]))
    except InputError as err:
        Console(stderr=True).print(f"[bold red]w2sr report: error:[/bold red] {err}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
