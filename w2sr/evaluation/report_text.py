"""The words of ``w2sr report``: report.md, the terminal table and the warning lines, all read from a
:class:`~w2sr.evaluation.report_records.Report`.

Accuracies and gains in percent with their 95% intervals; RGR as a percentage, "undefined" (with the reason below the
table) or "n/a" (a score is missing). Exercised by ``pytest tests/evaluation/test_report.py``.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from w2sr.evaluation.compare import MACRO, MISSING
from w2sr.evaluation.cost import cost_markdown
from w2sr.evaluation.report_records import Cell, Report
from w2sr.evaluation.settings import describe


def pct(value: float | None, signed: bool = False) -> str:
    """A fraction as percent with one decimal (``n/a`` for None)."""
    if value is None:
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def ci(interval: list[float] | None, signed: bool = False) -> str:
    """`` [lo, hi]`` in percent, or nothing."""
    return f" [{pct(interval[0], signed)}, {pct(interval[1], signed)}]" if interval else ""


def rgr_cell(report: Report, name: str, bench: str) -> str:
    """``90% [60, 120]``, ``undefined`` or ``n/a``."""
    value = report.rgr[name].get(bench)
    if value is None:
        return "n/a" if report.rgr_notes[name].get(bench, MISSING) == MISSING else "undefined"
    bounds = report.rgr_ci95.get(name, {}).get(bench)
    return f"{100 * value:.0f}%" + (f" [{100 * bounds[0]:.0f}, {100 * bounds[1]:.0f}]" if bounds else "")


def seed_sd(report: Report, name: str, bench: str) -> float | None:
    """The sd over seeds of a seed group on one benchmark (None for a single run)."""
    group = report.seed_groups.groups.get(name) if report.seed_groups else None
    return group.benchmarks[bench].sd if group and bench in group.benchmarks else None


def accuracy_cell(cell: Cell, sd: float | None = None, intervals: bool = True) -> str:
    """``68.0 [63.0, 73.0] (+18.0 [+9.0, +27.0])``; a seed group: ``68.0 ± 2.1 [63.0, 73.0] (...)``."""
    text = pct(cell.accuracy) + (f" ± {100 * sd:.1f}" if sd is not None else "") + (ci(cell.ci95) if intervals else "")
    if cell.gain is not None:
        text += f" ({pct(cell.gain, True)}{ci(cell.gain_ci95, True) if intervals else ''})"
    return text


def warnings(report: Report) -> list[str]:
    """The lines that say what the numbers must not be read as: settings that differ, benchmarks left out."""
    lines = []
    if report.mismatches:
        lines.append(
            "WARNING: these runs were NOT evaluated alike (compared on purpose with --allow_mismatch true); "
            "their differences are not the models' alone: " + "; ".join(describe(m) for m in report.mismatches)
        )
    if report.macro_left_out:
        lines.append(
            f"The macro row is over {', '.join(report.macro_benchmarks) or 'no benchmark'} (every run "
            "has them); left out: "
            + "; ".join(f"{b} (not in {', '.join(runs)})" for b, runs in report.macro_left_out.items())
        )
    return lines


def _header(report: Report) -> list[str]:
    lines = [f"# w2sr report ({report.metric}, %, 95% bootstrap interval)", ""]
    for line in warnings(report):
        lines += [f"> **{line}**" if line.startswith("WARNING") else line, ""]
    if report.base:
        lines += [
            f"Base: **{report.base}**" + (f"; reference: **{report.reference}**" if report.reference else "") + ".",
            "",
        ]
    return lines


def _accuracy_section(report: Report) -> list[str]:
    runs = report.run_names
    lines = ["| benchmark | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for bench, row in report.benchmarks.items():
        cells = [accuracy_cell(row[name], seed_sd(report, name, bench)) for name in runs]
        lines.append(f"| {bench} | " + " | ".join(cells) + " |")
    if report.base:
        lines += [
            "",
            f"Gains in parentheses are points over {report.base}, with a paired 95% bootstrap interval "
            "(one resample of the problems for both runs).",
        ]
    if report.seed_groups:
        lines += ["", "Seed groups: mean ± sd over seeds [pooled 95% interval] (seed by seed under Seeds below)."]
    for note in report.notes:
        lines += ["", f"Note: {note}."]
    if report.teacher:
        lines += [
            "",
            f"Teacher traces (training problems, `w2sr verify`): {pct(report.teacher.accuracy)}% correct "
            f"of {report.teacher.records} traces.",
        ]
    return lines


def _rgr_section(report: Report) -> list[str]:
    if not report.rgr:
        return ["", "RGR: n/a (no --reference run given)."] if report.base and not report.reference else []
    benches = list(report.benchmarks)
    lines = [
        "",
        f"## Reasoning Gap Recovered: (acc - {report.base}) / ({report.reference} - {report.base})",
        "",
        "| run | " + " | ".join(benches) + " |",
        "|---|" + "---:|" * len(benches),
    ]
    for name in report.rgr:
        lines.append(f"| {name} | " + " | ".join(rgr_cell(report, name, b) for b in benches) + " |")
    reasons = sorted({why for per in report.rgr_notes.values() for why in per.values()})
    for why in reasons:
        where = sorted({b for per in report.rgr_notes.values() for b, w in per.items() if w == why})
        lines.append(f"\nRGR on {', '.join(where)}: {why}.")
    return lines


def _percents(values: list[float | None], decimals: int = 1) -> str:
    return ", ".join("n/a" if v is None else f"{100 * v:.{decimals}f}" for v in values)


def _seed_section(report: Report) -> list[str]:
    if not report.seed_groups:
        return []
    lines = [
        "",
        "## Seeds",
        "",
        "Seed groups are paired by position (the i-th file of every group is seed i; a single run stands for every "
        f"seed). sd: sample standard deviation over the seeds' values. Pooled interval: {report.seed_groups.pooling}.",
        "",
        "| run | benchmark | per seed | mean ± sd | pooled 95% | RGR per seed (%) | RGR mean ± sd |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    notes = []
    for name, group in report.seed_groups.groups.items():
        for bench, stats in group.benchmarks.items():
            ratio = group.rgr.get(bench)
            mean_sd = "n/a" if stats.mean is None else f"{100 * stats.mean:.1f} ± {100 * (stats.sd or 0):.1f}"
            rgr_text = _percents(ratio.per_seed, 0) if ratio else ""
            rgr_mean = (
                "" if not ratio or ratio.mean is None else f"{100 * ratio.mean:.0f}% ± {100 * (ratio.sd or 0):.0f}"
            )
            lines.append(
                f"| {name} | {bench} | {_percents(stats.per_seed)} | {mean_sd} | {ci(stats.pooled_ci95).strip()} "
                f"| {rgr_text} | {rgr_mean} |"
            )
            notes += [f"{name} on {bench}, {note}" for note in (ratio.notes if ratio else [])]
    return lines + [f"\nPer-seed RGR of {note}." for note in notes]


def _curve_cell(points: list[list[float]], note: str | None) -> str:
    if not points:
        return note or "none"
    first, last = points[0], points[-1]
    return f"{len(points)} points, steps {int(first[0])}–{int(last[0])}: {first[1]:.4g} → {last[1]:.4g}"


def _fit_section(report: Report) -> list[str]:
    if not report.fit_runs:
        return []
    curves = list(next(iter(report.fit_runs.values())))
    lines = [
        "",
        "## Training runs (`--fit_runs`)",
        "",
        "| run | logger | " + " | ".join(curves) + " |",
        "|---|---|" + "---|" * len(curves),
    ]
    notes, sources = report.fit_notes or {}, report.fit_sources or {}
    for name, run in report.fit_runs.items():
        logger = f"{sources[name].logger} (`{sources[name].file}`)" if name in sources else ""
        cells = [_curve_cell(run.get(key) or [], notes.get(name, {}).get(key)) for key in curves]
        lines.append(f"| {name} | {logger} | " + " | ".join(cells) + " |")
    return lines


def rgr_beside_cost(report: Report) -> list[str]:
    """One line per run with an RGR: its value and interval against the reference (the macro row, else the one
    benchmark), to read beside the cost ratio."""
    lines = []
    for name, values in report.rgr.items():
        bench = MACRO if MACRO in values else next(iter(values), None)
        if bench is not None:
            lines.append(f"RGR of {name} against {report.reference} ({bench}): {rgr_cell(report, name, bench)}")
    return lines


def _cost_section(report: Report) -> list[str]:
    if report.arm_costs is None:
        return []
    lines = ["", cost_markdown(report.arm_costs).rstrip("\n")]
    if report.rgr:
        lines += [
            "",
            "Beside the cost ratio, the gain recovered (the reference should be the RL arm's evaluation):",
            "",
        ]
        lines += [f"- {line}" for line in rgr_beside_cost(report)]
    return lines


def markdown(report: Report) -> str:
    """report.md: warnings, the accuracy table, then gains and RGR, the seed groups seed by seed, the training runs
    (each empty curve with the reason)."""
    sections = _header(report) + _accuracy_section(report) + _rgr_section(report) + _seed_section(report)
    sections += _fit_section(report) + _cost_section(report)
    return "\n".join(sections) + "\n"


def comparison_table(report: Report) -> Table:
    """The accuracy table for the terminal."""
    runs = report.run_names
    table = Table(title=f"Accuracy ({report.metric}, %)")
    table.add_column("benchmark")
    for name in runs:
        table.add_column(name, justify="right")
    for name in report.rgr:
        table.add_column(f"RGR {name}", justify="right")
    for bench, row in report.benchmarks.items():
        cells = [accuracy_cell(row[n], seed_sd(report, n, bench), intervals=False) for n in runs]
        cells += [rgr_cell(report, name, bench) for name in report.rgr]
        table.add_row(bench, *cells)
    return table


def print_summary(report: Report, console: Console, written: list[str]) -> None:
    """The terminal output: the table, the warnings (the mismatch in red), why RGR is undefined, the files."""
    console.print(comparison_table(report))
    for line in warnings(report):
        console.print(
            f"[bold red]{line}[/bold red]" if line.startswith("WARNING") else line, highlight=False, soft_wrap=True
        )
    for per in report.rgr_notes.values():
        for bench, why in per.items():
            console.print(f"RGR on {bench}: {why}", highlight=False)
    if report.teacher:
        console.print(f"teacher traces: {pct(report.teacher.accuracy)}% correct", highlight=False)
    for name, notes in (report.fit_notes or {}).items():
        for why in notes.values():
            console.print(f"fit run {name}: {why}", highlight=False, soft_wrap=True)
    if report.arm_costs is not None:
        print_costs(report, console)
    console.print(f"wrote {', '.join(written)}", highlight=False)


def print_costs(report: Report, console: Console) -> None:
    """Each arm's device-seconds and FLOPs, the cost ratio, and RGR against the reference beside it."""
    assert report.arm_costs is not None
    for name, arm in report.arm_costs.arms.items():
        flops = "n/a" if arm.total.flops is None else f"{arm.total.flops:.3g}"
        missing = f" (no record: {', '.join(arm.missing)})" if arm.missing else ""
        console.print(
            f"cost of {name} ({' + '.join(arm.total.stages)}): {arm.total.device_seconds:.1f} device-seconds, "
            f"{flops} FLOPs{missing}",
            highlight=False,
            soft_wrap=True,
        )
    for ratio in report.arm_costs.ratios:
        parts = [
            f"{what} {'n/a' if v is None else f'{v:.3g}x'}"
            for what, v in (("device-seconds", ratio.device_seconds), ("FLOPs", ratio.flops))
        ]
        console.print(f"cost ratio {ratio.w2sr} / {ratio.rl}: {', '.join(parts)}", highlight=False, soft_wrap=True)
    for line in rgr_beside_cost(report):
        console.print(line, highlight=False, soft_wrap=True)
