"""Summary over seeds of the toy study: accuracy per model, RGR against both references, paired tests against the
teacher, copied slips and the W2SR step sweep; a table (summary.md), the numbers (summary.json) and a chart.

Reads, per seed folder, ``eval/<run>/results.json`` and ``predictions.jsonl`` (``w2sr evaluate``; the two
priors' from ``prior/eval/`` beside the seed folders), ``rl_verified.jsonl`` (the prior's own samples: the latent
skill),
``report/report.json`` and ``report-rl/report.json`` (``w2sr report``, reference ``gold`` / ``rl``),
``verify_summary.json`` / ``rl_verify_summary.json`` (``w2sr verify``) and ``models/<run>/w2sr_student.json`` (the
sweep's step counts). Per model and seed, against the teacher on the same held-out problems: ``fixes`` (the model
right, the teacher wrong), ``breaks`` (the reverse) and the two-sided sign-test p-value on them, exact
(``math.comb``); pooled: the counts summed over seeds and their sign test. ``copied_slips``: the share of the model's
wrong answers that equal the teacher's wrong answer on that problem. Exercised by ``python
examples/toy_w2s/aggregate.py --output runs/toy_w2s runs/toy_w2s/seed0 runs/toy_w2s/seed1 runs/toy_w2s/seed2``
(the last step of ``run.py``) and ``pytest tests/cli/test_toy_study.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUNS = [
    "teacher",
    "student-before",
    "w2sr",
    "w2sr-p",
    "w2sr-n",
    "gold",
    "rl",
    "control-before",
    "control-w2sr",
    "control-w2sr-p",
]
LABELS = {
    "teacher": "teacher",
    "student-before": "student before (prior)",
    "w2sr": "W2SR",
    "w2sr-p": "W2SR-P",
    "w2sr-n": "W2SR-N",
    "gold": "gold reference",
    "rl": "RL-like reference",
    "control-before": "control prior",
    "control-w2sr": "control + W2SR",
    "control-w2sr-p": "control + W2SR-P",
}
VARIANTS = ["w2sr", "w2sr-p", "w2sr-n", "control-w2sr", "control-w2sr-p"]  # RGR rows
REFERENCES = {"gold": "report", "rl": "report-rl"}  # reference run -> report folder
BASE = "student-before"
SWEEP = ["w2sr-50steps", "w2sr", "w2sr-300steps"]
PRIOR_RUNS = {"student-before", "control-before"}  # evaluated once, under <study>/prior/eval/


def eval_dir(folder: Path, run: str) -> Path:
    """Where a run's ``w2sr evaluate`` output is: the priors' beside the seed folders (``<study>/prior/eval``)."""
    return (folder.parent / "prior" if run in PRIOR_RUNS else folder) / "eval" / run


def latent_skill(path: Path) -> dict[str, Any] | None:
    """The prior's own samples (``rl_verified.jsonl``): how many solve step by step (a ``carry`` line) and how many
    of those, and of the answer-only ones, are right: the latent skill the RL-like reference draws on."""
    if not path.exists():
        return None
    counts = {"samples": 0, "step_by_step": 0, "step_by_step_correct": 0, "answer_only_correct": 0}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        steps = "carry" in record["completion"]
        counts["samples"] += 1
        counts["step_by_step"] += steps
        counts["step_by_step_correct" if steps else "answer_only_correct"] += bool(record["correct"])
    n, k = counts["samples"], counts["step_by_step"]
    return {
        **counts,
        "step_by_step_share": k / n if n else None,
        "step_by_step_accuracy": counts["step_by_step_correct"] / k if k else None,
        "answer_only_accuracy": counts["answer_only_correct"] / (n - k) if n > k else None,
    }


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


def sign_test(fixes: int, breaks: int) -> float:
    """Two-sided exact sign test of ``fixes`` vs ``breaks`` (ties dropped): P(as extreme | p = 1/2); 1.0 if none."""
    n = fixes + breaks
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(fixes, breaks) + 1)) / 2**n
    return min(1.0, 2 * tail)


def predictions(folder: Path, run: str) -> dict[str, dict[str, Any]] | None:
    """Greedy prediction per held-out problem (keyed by problem text): ``correct`` and the extracted answer."""
    path = eval_dir(folder, run) / "predictions.jsonl"
    if not path.exists():
        return None
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        out[record["problem"]] = {"correct": bool(record["correct"]), "prediction": record.get("prediction")}
    return out


def paired(model: dict[str, dict[str, Any]], teacher: dict[str, dict[str, Any]], path: Path) -> dict[str, Any]:
    """Fixes, breaks, sign-test p and copied slips of a model against the teacher on the same problems."""
    if set(model) != set(teacher):
        raise ValueError(f"{path}: not scored on the teacher's held-out problems")
    fixes = sum(model[p]["correct"] and not teacher[p]["correct"] for p in model)
    breaks = sum(teacher[p]["correct"] and not model[p]["correct"] for p in model)
    wrong = [p for p in model if not model[p]["correct"]]
    copied = sum(
        not teacher[p]["correct"]
        and model[p]["prediction"] is not None
        and model[p]["prediction"] == teacher[p]["prediction"]
        for p in wrong
    )
    return {
        "fixes": fixes,
        "breaks": breaks,
        "sign_test_p": sign_test(fixes, breaks),
        "wrong": len(wrong),
        "copied_slips": copied,
        "copied_share": copied / len(wrong) if wrong else None,
    }


def report_rgr(report: dict[str, Any], run: str) -> float | None:
    """``w2sr report``'s RGR of one run on the study's single benchmark (null when n/a or not evaluated)."""
    values = list(report.get("rgr", {}).get(run, {}).values())
    return values[0] if len(values) == 1 else None


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of the defined values, and the values per seed."""
    defined = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(defined) if defined else None,
        "std": statistics.stdev(defined) if len(defined) > 1 else 0.0 if defined else None,
        "min": min(defined) if defined else None,
        "max": max(defined) if defined else None,
        "per_seed": list(values),
    }


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def read_seed(folder: Path) -> dict[str, Any]:
    """Accuracies, RGRs, paired tests, trace statistics and the step sweep of one seed folder."""
    acc: dict[str, float | None] = {}
    for run in [*RUNS, *SWEEP]:  # a run whose training file was empty was not trained: None
        path = eval_dir(folder, run) / "results.json"
        acc[run] = accuracy(json.loads(path.read_text(encoding="utf-8")), path) if path.exists() else None
    teacher = predictions(folder, "teacher")
    tests = {}
    for run in RUNS[1:]:
        model = predictions(folder, run)
        tests[run] = paired(model, teacher, eval_dir(folder, run)) if model is not None and teacher else None
    rgr: dict[str, dict[str, float | None]] = {}
    for reference, report_folder in REFERENCES.items():
        report = read_json(folder / report_folder / "report.json")
        if report is not None and (report.get("base"), report.get("reference")) != (BASE, reference):
            raise ValueError(f"{folder / report_folder}: expected base {BASE!r} and reference {reference!r}")
        rgr[reference] = {v: report_rgr(report, v) if report else None for v in [*VARIANTS, "rl"]}
    summary = json.loads((folder / "verify_summary.json").read_text(encoding="utf-8"))
    rl = read_json(folder / "rl_verify_summary.json") or {}
    steps = {}
    for run in SWEEP:
        card = read_json(folder / "models" / run / "w2sr_student.json")
        if card is not None and acc[run] is not None:
            steps[run] = {"steps": card.get("global_step"), "accuracy": acc[run]}
    return {
        "seed": folder.name,
        "accuracy": acc,
        "rgr": rgr,
        "paired": tests,
        "teacher_trace_accuracy": summary["accuracy"],
        "variant_sizes": summary["variants"],
        "rl_trace_accuracy": rl.get("accuracy"),
        "rl_traces_kept": rl.get("variants", {}).get("W2SR-P"),
        "latent_skill": latent_skill(folder / "rl_verified.jsonl"),
        "sweep": steps,
    }


def pooled(tests: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    defined = [t for t in tests if t is not None]
    if not defined:
        return None
    fixes, breaks = sum(t["fixes"] for t in defined), sum(t["breaks"] for t in defined)
    wrong, copied = sum(t["wrong"] for t in defined), sum(t["copied_slips"] for t in defined)
    return {
        "fixes": fixes,
        "breaks": breaks,
        "sign_test_p": sign_test(fixes, breaks),
        "wrong": wrong,
        "copied_slips": copied,
        "copied_share": copied / wrong if wrong else None,
        "seeds": len(defined),
    }


def aggregate(folders: Sequence[Path]) -> dict[str, Any]:
    seeds = [read_seed(Path(f)) for f in folders]
    return {
        "seeds": [s["seed"] for s in seeds],
        "accuracy": {run: spread([s["accuracy"][run] for s in seeds]) for run in RUNS},
        "rgr": {ref: {v: spread([s["rgr"][ref][v] for s in seeds]) for v in [*VARIANTS, "rl"]} for ref in REFERENCES},
        "paired_vs_teacher": {
            run: {"per_seed": [s["paired"][run] for s in seeds], "pooled": pooled([s["paired"][run] for s in seeds])}
            for run in RUNS[1:]
        },
        "teacher_trace_accuracy": spread([s["teacher_trace_accuracy"] for s in seeds]),
        "variant_sizes": {
            name: spread([s["variant_sizes"][name] for s in seeds]) for name in ("W2SR", "W2SR-P", "W2SR-N")
        },
        "rl_trace_accuracy": spread([s["rl_trace_accuracy"] for s in seeds]),
        "rl_traces_kept": spread([s["rl_traces_kept"] for s in seeds]),
        "latent_skill": {
            "per_seed": [s["latent_skill"] for s in seeds],
            **{
                key: spread([(s["latent_skill"] or {}).get(key) for s in seeds])
                for key in ("step_by_step_share", "step_by_step_accuracy", "answer_only_accuracy")
            },
        },
        "sweep": {"seed": seeds[0]["seed"], "runs": seeds[0]["sweep"]},
    }


def _pct(stats: dict[str, Any] | None) -> str:
    if stats is None or stats["mean"] is None:
        return "n/a"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def markdown(summary: dict[str, Any]) -> str:
    """The results tables: accuracy, RGR, paired test and copied slips per model; the step sweep."""
    n = len(summary["seeds"])
    lines = [
        f"Held-out accuracy (%, greedy, paper grader), mean ± std over {n} seeds ({', '.join(summary['seeds'])}); "
        "RGR (%) = (acc − student before) / (reference − student before), from `w2sr report`; paired vs the "
        "teacher, pooled over seeds: problems the model fixes / breaks, exact two-sided sign-test p; copied: "
        "share of the model's wrong answers equal to the teacher's wrong answer.",
        "",
        "| model | accuracy | per seed | RGR vs gold | RGR vs RL-like | fixes / breaks | sign p | copied |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for run in RUNS:
        stats = summary["accuracy"][run]
        per_seed = ", ".join("n/a" if v is None else f"{100 * v:.1f}" for v in stats["per_seed"])
        rgr = [
            _pct(summary["rgr"][ref].get(run)) if run in [*VARIANTS, "rl"] and not (ref == "rl" and run == "rl") else ""
            for ref in REFERENCES
        ]
        test = summary["paired_vs_teacher"].get(run, {}).get("pooled") if run != "teacher" else None
        cells = (
            ["", "", ""]
            if test is None
            else [
                f"{test['fixes']} / {test['breaks']}",
                _p(test["sign_test_p"]),
                "n/a" if test["copied_share"] is None else f"{100 * test['copied_share']:.0f}%",
            ]
        )
        lines.append(f"| {LABELS[run]} | {_pct(stats)} | {per_seed} | {rgr[0]} | {rgr[1]} | {' | '.join(cells)} |")
    sizes, skill = summary["variant_sizes"], summary["latent_skill"]
    lines += [
        "",
        f"Teacher's greedy traces on the pool: {_pct(summary['teacher_trace_accuracy'])} % correct; training "
        f"set sizes (mean): W2SR {sizes['W2SR']['mean']:.0f}, W2SR-P {sizes['W2SR-P']['mean']:.0f}, W2SR-N "
        f"{sizes['W2SR-N']['mean']:.0f} traces. The prior's own samples: {_pct(summary['rl_trace_accuracy'])} % "
        f"correct, {summary['rl_traces_kept']['mean'] or 0:.0f} kept (mean) for the RL-like reference; of them "
        f"{_pct(skill['step_by_step_share'])} % solve step by step, {_pct(skill['step_by_step_accuracy'])} % of "
        f"those right (answer-only samples: {_pct(skill['answer_only_accuracy'])} % right).",
    ]
    sweep = summary["sweep"]["runs"]
    if sweep:
        lines += [
            "",
            f"W2SR step sweep ({summary['sweep']['seed']}): "
            + ", ".join(
                f"{r['steps']} steps {100 * r['accuracy']:.1f}%"
                for r in sorted(sweep.values(), key=lambda r: r["steps"] or 0)
            )
            + ".",
        ]
    return "\n".join(lines) + "\n"


def chart(summary: dict[str, Any], path: Path) -> None:
    """Bars of mean accuracy with ± std error bars and one dot per seed; beside them each variant's gap to the
    teacher per seed (the paired view: the seeds' teachers differ widely) and the step sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, gap_ax, sweep_ax) = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [4, 1.4, 1]})
    colors = [
        "#999999",
        "#c7c7c7",
        "#4c72b0",
        "#55a868",
        "#c44e52",
        "#8172b2",
        "#937860",
        "#dddddd",
        "#8fa8d0",
        "#9fd0a8",
    ]
    for x, run in enumerate(RUNS):
        stats = summary["accuracy"][run]
        if stats["mean"] is None:
            continue
        ax.bar(x, 100 * stats["mean"], yerr=100 * stats["std"], color=colors[x], capsize=4, alpha=0.9)
        dots = [100 * v for v in stats["per_seed"] if v is not None]
        ax.scatter([x] * len(dots), dots, color="black", s=10, zorder=3)
        ax.text(
            x,
            min(100 * (stats["mean"] + stats["std"]) + 1.5, 101),
            f"{100 * stats['mean']:.1f}",
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(range(len(RUNS)), [LABELS[r].replace(" ", "\n", 1) for r in RUNS], fontsize=7.5)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Toy weak-to-strong study: mean ± std over {len(summary['seeds'])} seeds (dots: seeds)", fontsize=10)
    teachers = summary["accuracy"]["teacher"]["per_seed"]
    for x, run in enumerate(["w2sr", "w2sr-p", "w2sr-n"]):
        gaps = [
            (i, 100 * (v - t))
            for i, (v, t) in enumerate(zip(summary["accuracy"][run]["per_seed"], teachers))
            if v is not None and t is not None
        ]
        gap_ax.scatter([x + 0.12 * (i - 1) for i, _ in gaps], [g for _, g in gaps], color=colors[2 + x], s=18, zorder=3)
        for i, g in gaps:
            gap_ax.annotate(
                summary["seeds"][i].removeprefix("seed"),
                (x + 0.12 * (i - 1), g),
                fontsize=6,
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
            )
    gap_ax.axhline(0, color="#999999", ls="--", lw=1)
    gap_ax.set_xticks(range(3), [LABELS[r] for r in ("w2sr", "w2sr-p", "w2sr-n")], fontsize=7.5)
    gap_ax.set_ylabel("accuracy − teacher's (points)", fontsize=8)
    gap_ax.set_title("vs the teacher, per seed", fontsize=10)
    runs = sorted(summary["sweep"]["runs"].values(), key=lambda r: r["steps"] or 0)
    if runs:
        sweep_ax.plot([r["steps"] for r in runs], [100 * r["accuracy"] for r in runs], "o-", color="#4c72b0")
    teacher = summary["accuracy"]["teacher"]["per_seed"][0]
    if teacher is not None:
        sweep_ax.axhline(100 * teacher, color="#999999", ls="--", label="teacher")
        sweep_ax.legend(fontsize=8)
    sweep_ax.set_xlabel("W2SR fine-tuning steps")
    sweep_ax.set_ylim(0, 105)
    sweep_ax.set_title(f"step sweep ({summary['sweep']['seed']})", fontsize=10)
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
