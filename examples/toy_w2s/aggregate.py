"""Mean and spread over seeds of the toy study: held-out accuracy per model, RGR per variant, a table and a chart.

Reads, per seed folder, ``eval/<run>/results.json`` (``w2sr evaluate``), ``report/report.json`` (``w2sr report``)
and ``verify_summary.json`` (``w2sr verify``); writes ``<output>/summary.json``, ``summary.md`` and ``summary.png``.
RGR (recovered share of the reference's gain) is ``w2sr report``'s per seed, (acc - student-before) / (reference -
student-before), n/a when the reference gains at most 1 point; the summary averages the defined values. Exercised by ``python examples/toy_w2s/aggregate.py --output runs/toy_w2s
runs/toy_w2s/seed0 runs/toy_w2s/seed1 runs/toy_w2s/seed2`` (the last step of ``run.py``) and
``pytest tests/cli/test_toy_study.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUNS = ["teacher", "student-before", "w2sr", "w2sr-p", "w2sr-n", "reference"]
LABELS = {"teacher": "teacher", "student-before": "student before", "w2sr": "W2SR", "w2sr-p": "W2SR-P",
          "w2sr-n": "W2SR-N", "reference": "reference (gold)"}
VARIANTS = ["w2sr", "w2sr-p", "w2sr-n"]
BASE, REFERENCE = "student-before", "reference"


def accuracy(results: dict[str, Any], path: Path) -> float:
    """Held-out accuracy (avg@n, a fraction) of one ``results.json``, in either results schema."""
    benchmarks = results.get("benchmarks")
    if isinstance(benchmarks, dict) and len(benchmarks) == 1:
        (entry,) = benchmarks.values()
        for key in ("avg@n", "accuracy"):
            if isinstance(entry.get(key), (int, float)):
                return float(entry[key])
    overall = results.get("overall")
    if isinstance(overall, dict) and isinstance(overall.get("accuracy"), (int, float)):
        return float(overall["accuracy"])
    raise ValueError(f"{path}: no accuracy found (expected benchmarks.<name>.avg@n or overall.accuracy)")


def report_rgr(report: dict[str, Any], run: str, path: Path) -> float | None:
    """``w2sr report``'s RGR of one run on the study's single benchmark (null when it is n/a)."""
    if run not in report["rgr"]:
        return None  # not evaluated (no traces in its variant) or no base/reference
    try:
        (value,) = report["rgr"][run].values()
    except ValueError:
        raise ValueError(f"{path}: expected rgr.{run} with one benchmark") from None
    return value


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of the defined values, and the values per seed."""
    defined = [v for v in values if v is not None]
    return {"mean": statistics.fmean(defined) if defined else None,
            "std": statistics.stdev(defined) if len(defined) > 1 else 0.0 if defined else None,
            "min": min(defined) if defined else None, "max": max(defined) if defined else None,
            "per_seed": list(values)}


def read_seed(folder: Path) -> dict[str, Any]:
    """Accuracies, RGRs and the teacher's trace statistics of one seed folder."""
    acc: dict[str, float | None] = {}
    for run in RUNS:  # a variant with no traces (the teacher got all or none right) was not trained: None
        path = folder / "eval" / run / "results.json"
        acc[run] = accuracy(json.loads(path.read_text(encoding="utf-8")), path) if path.exists() else None
    summary = json.loads((folder / "verify_summary.json").read_text(encoding="utf-8"))
    report_path = folder / "report" / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if (report.get("base"), report.get("reference")) != (BASE, REFERENCE):
        raise ValueError(f"{report_path}: expected base {BASE!r} and reference {REFERENCE!r}")
    return {"seed": folder.name, "accuracy": acc,
            "rgr": {v: report_rgr(report, v, report_path) for v in VARIANTS},
            "teacher_trace_accuracy": summary["accuracy"], "variant_sizes": summary["variants"]}


def aggregate(folders: Sequence[Path]) -> dict[str, Any]:
    seeds = [read_seed(Path(f)) for f in folders]
    return {
        "seeds": [s["seed"] for s in seeds],
        "accuracy": {run: spread([s["accuracy"][run] for s in seeds]) for run in RUNS},
        "rgr": {v: spread([s["rgr"][v] for s in seeds]) for v in VARIANTS},
        "teacher_trace_accuracy": spread([s["teacher_trace_accuracy"] for s in seeds]),
        "variant_sizes": {name: spread([s["variant_sizes"][name] for s in seeds])
                          for name in ("W2SR", "W2SR-P", "W2SR-N")},
    }


def _pct(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def markdown(summary: dict[str, Any]) -> str:
    """The results table: accuracy (mean ± sample std over seeds, per-seed values) and RGR per variant."""
    lines = [f"Held-out accuracy (%, greedy), mean ± std over {len(summary['seeds'])} seeds "
             f"({', '.join(summary['seeds'])}); RGR = (acc − student before) / (reference − student before).", "",
             "| model | accuracy | per seed | RGR (%) |", "|---|---:|---|---:|"]
    for run in RUNS:
        stats = summary["accuracy"][run]
        per_seed = ", ".join("n/a" if v is None else f"{100 * v:.1f}" for v in stats["per_seed"])
        rgr_cell = _pct(summary["rgr"][run]) if run in VARIANTS else ""
        lines.append(f"| {LABELS[run]} | {_pct(stats)} | {per_seed} | {rgr_cell} |")
    sizes = summary["variant_sizes"]
    lines += ["", f"Teacher's sampled traces on the pool: {_pct(summary['teacher_trace_accuracy'])} % correct; "
              f"training set sizes (mean): W2SR {sizes['W2SR']['mean']:.0f}, W2SR-P {sizes['W2SR-P']['mean']:.0f}, "
              f"W2SR-N {sizes['W2SR-N']['mean']:.0f} traces."]
    return "\n".join(lines) + "\n"


def chart(summary: dict[str, Any], path: Path) -> None:
    """Bars of mean accuracy with ± std error bars and one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    colors = {"teacher": "#999999", "student-before": "#c7c7c7", "w2sr": "#4c72b0", "w2sr-p": "#55a868",
              "w2sr-n": "#c44e52", "reference": "#8172b2"}
    for x, run in enumerate(RUNS):
        stats = summary["accuracy"][run]
        if stats["mean"] is None:
            continue
        ax.bar(x, 100 * stats["mean"], yerr=100 * stats["std"], color=colors[run], capsize=4, alpha=0.9)
        dots = [100 * v for v in stats["per_seed"] if v is not None]
        ax.scatter([x] * len(dots), dots, color="black", s=10, zorder=3)
        ax.text(x, 100 * stats["mean"] + 100 * stats["std"] + 1.5, f"{100 * stats['mean']:.1f}", ha="center",
                fontsize=9)
    ax.set_xticks(range(len(RUNS)), [LABELS[r] for r in RUNS], fontsize=9)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Toy weak-to-strong study: mean ± std over {len(summary['seeds'])} seeds (dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("seed_folders", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, required=True, help="folder for summary.json / .md / .png")
    args = parser.parse_args(argv)
    summary = aggregate(args.seed_folders)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (args.output / "summary.md").write_text(markdown(summary), encoding="utf-8")
    chart(summary, args.output / "summary.png")
    print(markdown(summary))


if __name__ == "__main__":
    main()
