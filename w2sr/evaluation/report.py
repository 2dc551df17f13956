"""Report: compare evaluation runs per benchmark, with gains over a base model and the Reasoning Gap Recovered.

``w2sr report --runs [base=runs/eval-base/results.json,w2sr=runs/eval-w2sr/results.json,rl=...] --base base
--reference rl --output_dir runs/report`` writes

* ``report.md`` — a per-benchmark table of accuracies (``avg@n``, i.e. pass@1, with 95% intervals), gains over
  the base in points with their paired 95% intervals, and RGR = (acc - acc_base) / (acc_ref - acc_base) for every
  other run; the macro row is over the benchmarks every run has, and the ones left out are named;
* ``report.json`` — the same numbers (RGR under ``rgr``: ``{run: {benchmark: value or null}}``, its interval under
  ``rgr_ci95``, the reason for each null under ``rgr_notes``; ``macro_benchmarks``, ``macro_left_out``,
  ``mismatches``; see :mod:`w2sr.evaluation.compare`, which computes them);
* ``report.png`` — grouped bars per benchmark with the intervals, and, given ``--fit_runs DIR`` (a fit run's
  folder with Lightning's CSVLogger ``metrics.csv``), ``val/reasoning_acc`` and ``train/loss`` over steps.

Runs evaluated with another grader, prompt, sampling or problem set are refused (exit 2) unless
``--allow_mismatch true``, which compares them under a warning. RGR is undefined, with the reason, when the
reference gains at most ``min_gap`` (1 point) over the base or its paired interval contains zero. Runs are named
``name=path``, else by their folder, else by their ``model``. ``python -m w2sr.report`` is an alias taking the same
options. Exercised by ``make quickstart`` and ``pytest tests/evaluation/test_report.py``.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from w2sr.evaluation.compare import MACRO, MIN_GAP, MISSING, Run, accuracy, build_report, describe, rgr
from w2sr.evaluation.report_request import ReportRequest
from w2sr.records.jsonl import InputError, atomic_open, check_output
from w2sr.runtime.command_line import parse_request

__all__ = ["MACRO", "MIN_GAP", "Run", "accuracy", "build_report", "rgr", "load_results", "parse_run", "markdown"]
__all__ += ["make_report", "write_report", "ReportRequest", "main"]


def load_results(path: str | Path) -> dict[str, Any]:
    """One ``results.json`` (``w2sr evaluate``); errors name the file and the missing field."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise InputError("file not found", path=path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON ({err.msg})", path=path, line=err.lineno) from None
    for key in ("model", "benchmarks"):
        if key not in results:
            raise InputError(
                "missing required field (is this a results.json of `w2sr evaluate`?)", path=path, field=key
            )
    for name, row in results["benchmarks"].items():
        if not isinstance(row, dict) or "avg@n" not in row:
            raise InputError("missing required field", path=path, field=f"benchmarks.{name}.avg@n")
    return results


def parse_run(spec: str) -> Run:
    """``name=path`` or ``path`` (named by its folder, or by its ``model`` when the folder says nothing)."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    file = Path(path)
    file = file / "results.json" if file.is_dir() else file
    results = load_results(file)
    if not name:
        folder = file.parent.name
        name = folder if folder not in ("", ".") else str(results["model"])
    return Run(name, file, results)


def _resolve(spec: str | None, runs: list[Run], role: str) -> Run | None:
    """``--base`` / ``--reference``: a run name, a path among the runs, or another results.json."""
    if not spec:
        return None
    for run in runs:
        if spec == run.name:
            return run
    for run in runs:
        if Path(spec.partition("=")[2] or spec).resolve() in (run.path.resolve(), run.path.parent.resolve()):
            return run
    if "=" in spec or Path(spec).exists():
        run = parse_run(spec)
        runs.append(run)
        return run
    raise InputError(
        f"{spec!r} is neither a run name ({', '.join(r.name for r in runs)}) nor a results file", field=role
    )


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _ci(interval: list[float] | None, signed: bool = False) -> str:
    return f" [{_pct(interval[0], signed)}, {_pct(interval[1], signed)}]" if interval else ""


def _rgr_cell(report: dict[str, Any], name: str, bench: str) -> str:
    value = report["rgr"][name].get(bench)
    if value is None:
        return "n/a" if report["rgr_notes"][name].get(bench, MISSING) == MISSING else "undefined"
    interval = (report.get("rgr_ci95") or {}).get(name, {}).get(bench)
    return f"{100 * value:.0f}%" + (f" [{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]" if interval else "")


def warnings(report: dict[str, Any]) -> list[str]:
    """The lines that say what the numbers must not be read as: settings that differ, benchmarks left out."""
    lines = []
    if report.get("mismatches"):
        lines.append(
            "WARNING: these runs were NOT evaluated alike (compared on purpose with --allow_mismatch true); "
            "their differences are not the models' alone: " + "; ".join(describe(m) for m in report["mismatches"])
        )
    if report.get("macro_left_out"):
        lines.append(
            f"The macro row is over {', '.join(report['macro_benchmarks']) or 'no benchmark'} (every run "
            "has them); left out: "
            + "; ".join(f"{b} (not in {', '.join(runs)})" for b, runs in report["macro_left_out"].items())
        )
    return lines


def markdown(report: dict[str, Any], teacher: dict[str, Any] | None = None) -> str:
    """report.md: warnings, the accuracy table, then gains and RGR."""
    runs = [r["name"] for r in report["runs"]]
    lines = [f"# w2sr report ({report['metric']}, %, 95% bootstrap interval)", ""]
    for line in warnings(report):
        lines += [f"> **{line}**" if line.startswith("WARNING") else line, ""]
    if report["base"]:
        lines.append(
            f"Base: **{report['base']}**"
            + (f"; reference: **{report['reference']}**" if report["reference"] else "")
            + "."
        )
        lines.append("")
    lines += ["| benchmark | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for bench, row in report["benchmarks"].items():
        cells = []
        for name in runs:
            cell = row[name]
            text = _pct(cell["accuracy"]) + _ci(cell["ci95"])
            if cell["gain"] is not None:
                text += f" ({_pct(cell['gain'], True)}{_ci(cell.get('gain_ci95'), True)})"
            cells.append(text)
        lines.append(f"| {bench} | " + " | ".join(cells) + " |")
    if report["base"]:
        lines += [
            "",
            f"Gains in parentheses are points over {report['base']}, with a paired 95% bootstrap interval "
            "(one resample of the problems for both runs).",
        ]
    for note in report.get("notes", []):
        lines += ["", f"Note: {note}."]
    if teacher:
        lines += [
            "",
            f"Teacher traces (training problems, `w2sr verify`): {_pct(teacher['accuracy'])}% correct "
            f"of {teacher.get('records')} traces.",
        ]
    if report["rgr"]:
        benches = list(report["benchmarks"])
        lines += [
            "",
            f"## Reasoning Gap Recovered: (acc - {report['base']}) / ({report['reference']} - {report['base']})",
            "",
            "| run | " + " | ".join(benches) + " |",
            "|---|" + "---:|" * len(benches),
        ]
        for name in report["rgr"]:
            lines.append(f"| {name} | " + " | ".join(_rgr_cell(report, name, b) for b in benches) + " |")
        reasons = sorted({why for per in report["rgr_notes"].values() for why in per.values()})
        for why in reasons:
            where = sorted({b for per in report["rgr_notes"].values() for b, w in per.items() if w == why})
            lines.append(f"\nRGR on {', '.join(where)}: {why}.")
    elif report["base"] and not report["reference"]:
        lines += ["", "RGR: n/a (no --reference run given)."]
    return "\n".join(lines) + "\n"


def read_fit_metrics(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``val/reasoning_acc`` and ``train/loss`` over steps from a fit run's CSVLogger ``metrics.csv``."""
    folder = Path(folder)
    files = [folder] if folder.is_file() else sorted(folder.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise InputError("no metrics.csv (Lightning CSVLogger) under this folder", path=folder)
    curves: dict[str, list[tuple[int, float]]] = {"val/reasoning_acc": [], "train/loss": []}
    with files[-1].open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for key, columns in (
                ("val/reasoning_acc", ("val/reasoning_acc",)),
                ("train/loss", ("train/loss", "train/loss_step")),
            ):
                for column in columns:
                    if row.get(column) not in (None, "") and row.get("step") not in (None, ""):
                        curves[key].append((int(float(row["step"])), float(row[column])))
                        break
    return curves


def plot(
    report: dict[str, Any], path: Path, fit_curves: dict[str, dict[str, list[tuple[int, float]]]] | None = None
) -> None:
    """report.png: grouped bars (one group per benchmark, one bar per run, 95% intervals as error bars), then the
    training curves of each fit run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [r["name"] for r in report["runs"]]
    benches = list(report["benchmarks"])
    rows = 2 if fit_curves else 1
    fig = plt.figure(
        figsize=(max(7.0, 1.3 * len(benches) * max(1, len(runs)) / 2 + 3), 4.4 * rows), layout="constrained"
    )
    grid = fig.add_gridspec(rows, 2)
    ax = fig.add_subplot(grid[0, :])
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(benches))
    colors = plt.get_cmap("tab10").colors
    for i, name in enumerate(runs):
        values = [report["benchmarks"][b][name]["accuracy"] for b in benches]
        heights = [100 * v if v is not None else 0.0 for v in values]
        errors = np.zeros((2, len(benches)))
        for j, b in enumerate(benches):
            ci = report["benchmarks"][b][name]["ci95"]
            if ci and values[j] is not None:
                errors[:, j] = [max(0.0, 100 * (values[j] - ci[0])), max(0.0, 100 * (ci[1] - values[j]))]
        bars = ax.bar(
            x + (i - (len(runs) - 1) / 2) * width,
            heights,
            width,
            yerr=errors,
            capsize=3,
            label=name,
            color=colors[i % len(colors)],
            edgecolor="white",
            linewidth=0.5,
        )
        for j, (bar, value, b) in enumerate(zip(bars, values, benches)):
            label = "n/a" if value is None else f"{100 * value:.1f}"
            rgr_value = report["rgr"].get(name, {}).get(b)
            if rgr_value is not None:
                label += f"\nRGR\n{100 * rgr_value:.0f}%"
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height() + errors[1, j]),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                linespacing=1.0,
            )
    ax.set_xticks(x, benches)
    ax.set_ylabel(f"accuracy, {report['metric']} (%)")
    top = max(
        [
            100 * (c["ci95"][1] if c["ci95"] else c["accuracy"] or 0)
            for row in report["benchmarks"].values()
            for c in row.values()
        ]
        + [1.0]
    )
    ax.set_ylim(0, min(100.0, top * 1.2 + 12) if top < 75 else 112)
    title = "Accuracy per benchmark (bars: 95% bootstrap intervals over problems)"
    if report["base"] and report["reference"]:
        title += f"\nRGR relative to {report['base']} -> {report['reference']}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if fit_curves:
        for column, key in enumerate(("val/reasoning_acc", "train/loss")):
            sub = fig.add_subplot(grid[1, column])
            for name, curves in fit_curves.items():
                points = curves.get(key) or []
                if points:
                    steps, values = zip(*points)
                    sub.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
            sub.set_xlabel("step")
            sub.set_title(key, fontsize=10)
            if key == "val/reasoning_acc":
                sub.set_ylim(-0.03, 1.03)
            sub.grid(alpha=0.3)
            if len(fit_curves) > 1:
                sub.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    tmp.replace(path)


def comparison_table(report: dict[str, Any]) -> Table:
    """The accuracy table for the terminal."""
    runs = [r["name"] for r in report["runs"]]
    table = Table(title=f"Accuracy ({report['metric']}, %)")
    table.add_column("benchmark")
    for name in runs:
        table.add_column(name, justify="right")
    for name in report["rgr"]:
        table.add_column(f"RGR {name}", justify="right")
    for bench, row in report["benchmarks"].items():
        cells = [
            _pct(row[n]["accuracy"]) + (f" ({_pct(row[n]['gain'], True)})" if row[n]["gain"] is not None else "")
            for n in runs
        ]
        cells += [_rgr_cell(report, name, bench) for name in report["rgr"]]
        table.add_row(bench, *cells)
    return table


def read_teacher(path: str | Path) -> dict[str, Any]:
    """The teacher traces' accuracy from a ``w2sr verify --summary`` file."""
    path = Path(path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read the verification summary ({err})", path=path) from None
    if "accuracy" not in summary:
        raise InputError("missing required field", path=path, field="accuracy")
    return {"summary": str(path), "accuracy": summary["accuracy"], "records": summary.get("records")}


def write_report(request: ReportRequest, console: Console | None = None) -> dict[str, Any]:
    """``w2sr report``: load the runs, write report.md / report.json / report.png into ``output_dir``; return the
    report."""
    runs, base, reference, overwrite = request.runs, request.base, request.reference, request.overwrite
    if not runs:
        raise InputError("give at least one results.json", field="runs")
    output_dir = Path(request.output_dir)
    outputs = [check_output(output_dir / name, overwrite) for name in ("report.md", "report.json", "report.png")]
    loaded = [parse_run(spec) for spec in runs]
    base_run = _resolve(base, loaded, "base")
    reference_run = _resolve(reference, loaded, "reference")
    if reference_run and not base_run:
        raise InputError("--reference needs --base (RGR is measured from the base)", field="base")
    report = build_report(
        loaded, base_run, reference_run, request.metric, request.min_gap, allow_mismatch=request.allow_mismatch
    )
    curves = {Path(folder).name or str(folder): read_fit_metrics(folder) for folder in request.fit_runs}
    if curves:
        report["fit_runs"] = {name: {k: [list(p) for p in v] for k, v in c.items()} for name, c in curves.items()}
    teacher_row = read_teacher(request.teacher) if request.teacher else None
    if teacher_row:
        report["teacher"] = teacher_row
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(outputs[0], overwrite) as handle:
        handle.write(markdown(report, teacher_row))
    with atomic_open(outputs[1], overwrite) as handle:
        json.dump(report, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    plot(report, outputs[2], curves or None)
    console = console or Console()
    console.print(comparison_table(report))
    for line in warnings(report):  # the mismatch warning in red, the benchmarks left out of the macro row
        console.print(
            f"[bold red]{line}[/bold red]" if line.startswith("WARNING") else line, highlight=False, soft_wrap=True
        )
    for per in report["rgr_notes"].values():
        for bench, why in per.items():
            console.print(f"RGR on {bench}: {why}", highlight=False)
    if teacher_row:
        console.print(f"teacher traces: {_pct(teacher_row['accuracy'])}% correct", highlight=False)
    console.print(f"wrote {outputs[0]}, {outputs[1]}, {outputs[2]}", highlight=False)
    return report


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
