"""report.png of ``w2sr report``: grouped bars per benchmark (one bar per run, 95% intervals as error bars, RGR under
each value; a seed group's bar is its mean with a dot per seed), then one panel per training curve of the
``--fit_runs`` (an empty one says why).

:func:`plot` lays out the figure (:func:`_figure`), draws the bars (:func:`_accuracy_bars`), labels them
(:func:`_label_bars`, :func:`_seed_dots`), styles the axes (:func:`_style_accuracy_axes`), draws the curves
(:func:`_curve_panels`) and saves atomically (:func:`_save`). Exercised by ``pytest tests/evaluation/test_report.py``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from w2sr.evaluation.fit_curves import CURVES
from w2sr.evaluation.report_records import Report

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.container import BarContainer
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec


def _figure(report: Report, with_curves: bool) -> tuple[Figure, GridSpec]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, benches = report.run_names, list(report.benchmarks)
    rows = 2 if with_curves else 1
    width = max(7.0, 1.3 * len(benches) * max(1, len(runs)) / 2 + 3)
    fig = plt.figure(figsize=(max(width, 10.0) if with_curves else width, 4.4 * rows), layout="constrained")
    return fig, fig.add_gridspec(rows, len(CURVES))


def _error_bars(report: Report, name: str, benches: list[str]) -> np.ndarray:
    """``(2, benchmarks)``: the distances from each value down to and up to its interval's ends, in points."""
    errors = np.zeros((2, len(benches)))
    for j, bench in enumerate(benches):
        cell = report.benchmarks[bench][name]
        if cell.ci95 and cell.accuracy is not None:
            errors[:, j] = [
                max(0.0, 100 * (cell.accuracy - cell.ci95[0])),
                max(0.0, 100 * (cell.ci95[1] - cell.accuracy)),
            ]
    return errors


def _label_bars(ax: Axes, report: Report, name: str, bars: BarContainer, errors: np.ndarray) -> None:
    """The value above each bar (and its interval), with the run's RGR on that benchmark under it."""
    for j, (bar, bench) in enumerate(zip(bars, report.benchmarks)):
        value = report.benchmarks[bench][name].accuracy
        label = "n/a" if value is None else f"{100 * value:.1f}"
        rgr_value = report.rgr.get(name, {}).get(bench)
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


def _seed_dots(ax: Axes, report: Report, name: str, bars: BarContainer) -> None:
    """A seed group's value on each seed, as dots on its bars."""
    group = report.seed_groups.groups.get(name) if report.seed_groups else None
    if group is None:
        return
    for bar, bench in zip(bars, report.benchmarks):
        values = [100 * v for v in group.benchmarks[bench].per_seed if v is not None]
        middle = bar.get_x() + bar.get_width() / 2
        ax.scatter([middle] * len(values), values, s=9, color="black", zorder=3, linewidths=0)


def _accuracy_bars(ax: Axes, report: Report) -> None:
    import matplotlib.pyplot as plt

    runs, benches = report.run_names, list(report.benchmarks)
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(benches))
    colors = plt.get_cmap("tab10").colors
    for i, name in enumerate(runs):
        values = [report.benchmarks[b][name].accuracy for b in benches]
        errors = _error_bars(report, name, benches)
        bars = ax.bar(
            x + (i - (len(runs) - 1) / 2) * width,
            [100 * v if v is not None else 0.0 for v in values],
            width,
            yerr=errors,
            capsize=3,
            label=name,
            color=colors[i % len(colors)],
            edgecolor="white",
            linewidth=0.5,
        )
        _label_bars(ax, report, name, bars, errors)
        _seed_dots(ax, report, name, bars)
    ax.set_xticks(x, benches)


def _style_accuracy_axes(ax: Axes, report: Report) -> None:
    ax.set_ylabel(f"accuracy, {report.metric} (%)")
    tops = [
        100 * (c.ci95[1] if c.ci95 else c.accuracy or 0) for row in report.benchmarks.values() for c in row.values()
    ]
    top = max(tops + [1.0])
    ax.set_ylim(0, min(100.0, top * 1.2 + 12) if top < 75 else 112)
    title = "Accuracy per benchmark (bars: 95% bootstrap intervals over problems)"
    if report.seed_groups:
        title += "\nseed groups: the mean over seeds, interval over seeds and problems, a dot per seed"
    if report.base and report.reference:
        title += f"\nRGR relative to {report.base} -> {report.reference}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _curve_panels(fig: Figure, grid: GridSpec, report: Report) -> None:
    """One panel per curve, one line per fit run; a run without the curve is named on the panel with the reason."""
    fit_runs, notes = report.fit_runs or {}, report.fit_notes or {}
    for column, key in enumerate(CURVES):
        sub = fig.add_subplot(grid[1, column])
        for name, curves in fit_runs.items():
            points = curves.get(key) or []
            if points:
                steps, values = zip(*points)
                sub.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
        missing = [f"{name}: {notes[name][key]}" for name in fit_runs if key in notes.get(name, {})]
        if missing:
            sub.text(
                0.5,
                0.5,
                "\n".join(textwrap.fill(line, 38) for line in missing),
                transform=sub.transAxes,
                ha="center",
                va="center",
                fontsize=7,
                color="#a00000",
            )
        sub.set_xlabel("step")
        sub.set_title(key, fontsize=10)
        if key == "val/reasoning_acc":
            sub.set_ylim(-0.03, 1.03)
        sub.grid(alpha=0.3)
        if len(fit_runs) > 1 and len(missing) < len(fit_runs):
            sub.legend(fontsize=8)


def _save(fig: Figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    tmp.replace(path)


def plot(report: Report, path: Path) -> None:
    """report.png: grouped bars (one group per benchmark, one bar per run, 95% intervals as error bars), then the
    training curves of each fit run (``report.fit_runs``)."""
    fig, grid = _figure(report, bool(report.fit_runs))
    ax = fig.add_subplot(grid[0, :])
    _accuracy_bars(ax, report)
    _style_accuracy_axes(ax, report)
    if report.fit_runs:
        _curve_panels(fig, grid, report)
    _save(fig, path)
