"""What is specific to the toy study, over its seeds: paired sign tests against the teacher, copied slips, the
prior's latent skill, the cost of each arm with and without the teacher's training, and a chart; the accuracies and
RGRs themselves are ``w2sr report``'s.

Reads, in the study folder, ``report-gold/``, ``report-rl/`` and ``report-grpo/report.json`` (``w2sr report`` with
one seed group per model against the gold reference, the RL-like reference and GRPO: per-seed accuracy, mean, sd and
pooled interval, per-seed RGR and the RGR of the seed means); per seed folder, ``report-grpo/report.json`` (that
seed's report against GRPO: the cost of each arm and the cost ratio, ``cost`` / ``cost_ratio``),
``fits/teacher/cost.json`` (the teacher's own training), ``eval/<run>/predictions.jsonl`` (``w2sr evaluate``),
``rl_verified.jsonl`` (the prior's own samples: the latent skill), ``verify_summary.json`` /
``rl_verify_summary.json`` (``w2sr verify``) and the GRPO fit's CSV log (``fits/grpo``: its reward per step).

Per model and seed, against the teacher on the same held-out problems: ``fixes`` (the model right, the teacher
wrong), ``breaks`` (the reverse) and the two-sided sign-test p-value on them, exact (``math.comb``); pooled: the
counts summed over seeds and their sign test. ``copied_slips``: the share of the model's wrong answers that equal
the teacher's wrong answer on that problem. Writes ``summary.json``, ``summary.md`` (tables) and ``summary.png``.
Exercised by ``python examples/toy_w2s/aggregate.py --output runs/toy_w2s runs/toy_w2s/seed0 runs/toy_w2s/seed1
runs/toy_w2s/seed2`` (the last step of ``run.py``) and ``pytest tests/cli/test_toy_study.py``.
"""

from __future__ import annotations

import argparse
import csv
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
    "grpo",
    "control-before",
    "control-w2sr",
]
LABELS = {
    "teacher": "teacher",
    "student-before": "student before (prior)",
    "w2sr": "W2SR",
    "w2sr-p": "W2SR-P",
    "w2sr-n": "W2SR-N",
    "gold": "gold reference",
    "rl": "RL-like reference",
    "grpo": "GRPO (RL)",
    "control-before": "control prior",
    "control-w2sr": "control + W2SR",
}
REFERENCES = {"gold": "report-gold", "rl": "report-rl", "grpo": "report-grpo"}  # reference run -> report folder
BASE = "student-before"
VARIANTS = ["w2sr", "w2sr-p", "w2sr-n"]  # the W2SR arms of the cost comparison (fits/<variant>)
COST_FIELDS = ("device_seconds", "flops", "cpu_seconds", "wall_seconds")


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of the defined values, and the values per seed (for the study's
    own statistics: the latent skill, trace accuracies, costs; accuracies and RGRs come from ``w2sr report``)."""
    defined = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(defined) if defined else None,
        "std": statistics.stdev(defined) if len(defined) > 1 else 0.0 if defined else None,
        "min": min(defined) if defined else None,
        "max": max(defined) if defined else None,
        "per_seed": list(values),
    }


# ----------------------------------------------------------------------------------------- the reports' numbers
def benchmark_of(report: dict[str, Any]) -> str:
    """The study's single benchmark in a report (not the ``macro`` row)."""
    names = [name for name in report["benchmarks"] if name != "macro"]
    if len(names) != 1:
        raise ValueError(f"expected one benchmark in the report, found {names}")
    return names[0]


def accuracy_view(report: dict[str, Any], run: str) -> dict[str, Any] | None:
    """A run's held-out accuracy as the report has it: ``per_seed``, ``mean``, ``sd`` and the (pooled) ``ci95``; a
    report over one seed has single runs (``sd`` null). None when the run is not in the report."""
    bench = benchmark_of(report)
    cell = report["benchmarks"][bench].get(run)
    if cell is None:
        return None
    group = (report.get("seed_groups") or {}).get("groups", {}).get(run)
    if group is not None:
        stats = group["benchmarks"][bench]
        return {"per_seed": stats["per_seed"], "mean": stats["mean"], "sd": stats["sd"], "ci95": stats["pooled_ci95"]}
    return {"per_seed": [cell["accuracy"]], "mean": cell["accuracy"], "sd": None, "ci95": cell["ci95"]}


def rgr_view(report: dict[str, Any], run: str) -> dict[str, Any] | None:
    """A run's RGR as the report has it: ``rgr`` (a group: the ratio of the mean gains) with ``ci95`` (pooled over
    seeds and problems), ``per_seed`` with their ``mean`` and ``sd``, and ``notes`` (why one is undefined)."""
    bench = benchmark_of(report)
    if run not in report.get("rgr", {}):
        return None
    value, ci95 = report["rgr"][run].get(bench), (report.get("rgr_ci95", {}).get(run) or {}).get(bench)
    note = (report.get("rgr_notes", {}).get(run) or {}).get(bench)
    group = (report.get("seed_groups") or {}).get("groups", {}).get(run)
    if group is not None and bench in group["rgr"]:
        seeds = group["rgr"][bench]
        return {"rgr": value, "ci95": ci95, "per_seed": seeds["per_seed"], "mean": seeds["mean"], "sd": seeds["sd"],
                "notes": [note, *seeds["notes"]] if note else seeds["notes"]}  # fmt: skip
    return {"rgr": value, "ci95": ci95, "per_seed": [value], "mean": value, "sd": None, "notes": [note] if note else []}


# --------------------------------------------------------------------------------------- paired vs the teacher
def sign_test(fixes: int, breaks: int) -> float:
    """Two-sided exact sign test of ``fixes`` vs ``breaks`` (ties dropped): P(as extreme | p = 1/2); 1.0 if none."""
    n = fixes + breaks
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(fixes, breaks) + 1)) / 2**n
    return min(1.0, 2 * tail)


def predictions(folder: Path, run: str) -> dict[str, dict[str, Any]] | None:
    """Greedy prediction per held-out problem (keyed by problem text): ``correct`` and the extracted answer."""
    path = folder / "eval" / run / "predictions.jsonl"
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


def pooled(tests: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The seeds' fixes, breaks, wrong answers and copied slips summed, with the sign test on the sums."""
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


# ------------------------------------------------------------------------------------------------ latent skill
def latent_skill(path: Path) -> dict[str, Any] | None:
    """The prior's own samples (``rl_verified.jsonl``): how many solve step by step (a ``carry`` line) and how many
    of those, and of the answer-only ones, are right: the latent skill the RL-like reference and GRPO draw on."""
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


# --------------------------------------------------------------------------------------------------------- cost
def arm_totals(arm: dict[str, Any]) -> dict[str, float | None]:
    return {key: arm.get(key) for key in COST_FIELDS}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def seed_cost(folder: Path) -> dict[str, Any] | None:
    """One seed's arms from its report against GRPO (``cost``, ``cost_ratio``: the teacher counted as given, as the
    paper does), and each W2SR arm again with the teacher's own training added (``fits/teacher/cost.json``)."""
    report = read_json(folder / "report-grpo" / "report.json")
    if report is None or not report.get("cost"):
        return None
    arms = report["cost"]
    rl = next((name for name, arm in arms.items() if arm["arm"] == "rl"), None)
    teacher_fit = (read_json(folder / "fits" / "teacher" / "cost.json") or {}).get("cost")
    out: dict[str, Any] = {"rl": arm_totals(arms[rl]) if rl else None, "teacher_fit": None, "variants": {}}
    if teacher_fit is not None:
        out["teacher_fit"] = {key: teacher_fit.get(key) for key in COST_FIELDS}
    for name, arm in arms.items():
        if arm["arm"] != "w2sr":
            continue
        variant = Path(arm["fit_run"]).name
        given = arm_totals(arm)
        ratio = next((r for r in report.get("cost_ratio", []) if r["w2sr"] == name and r["rl"] == rl), None)
        entry: dict[str, Any] = {"teacher_given": given, "ratio_teacher_given": ratio, "complete": arm["complete"]}
        if teacher_fit is not None and rl is not None:
            trained = {
                key: None if given[key] is None or teacher_fit.get(key) is None else given[key] + teacher_fit[key]
                for key in COST_FIELDS
            }
            entry["with_teacher_fit"] = trained
            entry["ratio_with_teacher_fit"] = {key: _ratio(trained[key], arms[rl].get(key)) for key in COST_FIELDS}
        out["variants"][variant] = entry
    return out


def grpo_rewards(folder: Path, window: int = 5) -> dict[str, Any] | None:
    """The GRPO fit's training reward (``rl/reward`` in its CSV log): steps, and the mean of the first and last
    ``window`` steps."""
    logs = sorted((folder / "fits" / "grpo").rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return None
    with logs[-1].open(encoding="utf-8") as handle:
        rewards = [float(row["rl/reward"]) for row in csv.DictReader(handle) if row.get("rl/reward")]
    if not rewards:
        return None
    return {
        "steps": len(rewards),
        "first": statistics.fmean(rewards[:window]),
        "last": statistics.fmean(rewards[-window:]),
        "window": window,
    }


# ------------------------------------------------------------------------------------------------------ summary
def read_seed(folder: Path) -> dict[str, Any]:
    """Paired tests, trace statistics, the latent skill, the cost of each arm and GRPO's rewards of one seed."""
    teacher = predictions(folder, "teacher")
    tests = {}
    for run in RUNS[1:]:
        model = predictions(folder, run)
        tests[run] = paired(model, teacher, folder / "eval" / run) if model is not None and teacher else None
    summary = json.loads((folder / "verify_summary.json").read_text(encoding="utf-8"))
    rl = read_json(folder / "rl_verify_summary.json") or {}
    return {
        "seed": folder.name,
        "paired": tests,
        "teacher_trace_accuracy": summary["accuracy"],
        "variant_sizes": summary["variants"],
        "rl_trace_accuracy": rl.get("accuracy"),
        "rl_traces_kept": rl.get("variants", {}).get("W2SR-P"),
        "latent_skill": latent_skill(folder / "rl_verified.jsonl"),
        "cost": seed_cost(folder),
        "grpo_rewards": grpo_rewards(folder),
    }


def read_reports(study: Path) -> dict[str, dict[str, Any]]:
    """The reports over the seeds, by reference (a reference whose report is missing is left out)."""
    reports = {}
    for reference, folder in REFERENCES.items():
        report = read_json(study / folder / "report.json")
        if report is None:
            continue
        if (report.get("base"), report.get("reference")) != (BASE, reference):
            raise ValueError(f"{study / folder}: expected base {BASE!r} and reference {reference!r}")
        reports[reference] = report
    return reports


def aggregate(study: Path, folders: Sequence[Path]) -> dict[str, Any]:
    seeds = [read_seed(Path(f)) for f in folders]
    reports = read_reports(study)
    first = next(iter(reports.values()), None)
    accuracy = {run: accuracy_view(first, run) if first else None for run in RUNS}
    costs = [s["cost"] for s in seeds]
    cost_spread: dict[str, Any] = {}
    for variant in VARIANTS:
        entries = [(c or {}).get("variants", {}).get(variant) for c in costs]
        cost_spread[variant] = {
            "ratio_teacher_given": {
                key: spread([(e or {}).get("ratio_teacher_given", {}).get(key) if e else None for e in entries])
                for key in ("device_seconds", "flops", "cpu_seconds")
            },
            "ratio_with_teacher_fit": {
                key: spread([(e or {}).get("ratio_with_teacher_fit", {}).get(key) if e else None for e in entries])
                for key in ("device_seconds", "flops", "cpu_seconds")
            },
        }
    return {
        "seeds": [s["seed"] for s in seeds],
        "reports": {ref: REFERENCES[ref] for ref in reports},
        "benchmark": benchmark_of(first) if first else None,
        "accuracy": accuracy,
        "rgr": {ref: {run: rgr_view(report, run) for run in RUNS} for ref, report in reports.items()},
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
        "grpo_rewards": [s["grpo_rewards"] for s in seeds],
        "cost": {"per_seed": costs, "ratios": cost_spread},
    }


# --------------------------------------------------------------------------------------------------------- text
def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def _mean_sd(view: dict[str, Any] | None, mean: str = "mean", sd: str = "sd") -> str:
    if view is None or view.get(mean) is None:
        return "n/a"
    return _pct(view[mean]) + ("" if view.get(sd) is None else f" ± {_pct(view[sd])}")


def _rgr_cell(view: dict[str, Any] | None) -> str:
    """Per-seed RGR mean ± sd, with how many seeds define it when some do not (a reference at or below the
    prior on a seed leaves that seed's RGR undefined: one defined seed is no spread)."""
    if not view:
        return ""
    defined = sum(v is not None for v in view["per_seed"])
    if defined == 0:
        return "undefined"
    if defined == 1:
        return _pct(view["mean"]) + f" (1 of {len(view['per_seed'])} seeds)"
    return _mean_sd(view) + (
        f" ({defined} of {len(view['per_seed'])} seeds)" if defined < len(view["per_seed"]) else ""
    )


def _ci(ci95: Sequence[float] | None, digits: int = 1) -> str:
    return "" if not ci95 else f" [{_pct(ci95[0], digits)}, {_pct(ci95[1], digits)}]"


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}x"


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    for size, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g} {prefix}"
    return f"{value:.3g}"


def markdown(summary: dict[str, Any]) -> str:
    """The tables: accuracy, RGR (per seed and of the seed means), paired test and copied slips per model; the cost
    of each arm per seed; the traces and the latent skill."""
    n, rgr = len(summary["seeds"]), summary["rgr"]
    refs = [ref for ref in REFERENCES if ref in rgr]
    names = {"gold": "gold", "rl": "RL-like", "grpo": "GRPO"}
    lines = [
        f"Held-out accuracy (%, greedy, paper grader) over {n} seed(s) ({', '.join(summary['seeds'])}), from `w2sr "
        "report` with one seed group per model (mean ± sd over the seeds, [pooled 95% interval over seeds and "
        "problems]); RGR (%) = (acc − student before) / (reference − student before), per seed, mean ± sd; paired vs "
        "the teacher, pooled over seeds: problems the model fixes / breaks, exact two-sided sign-test p; copied: "
        "share of the model's wrong answers equal to the teacher's wrong answer.",
        "",
        "| model | accuracy | per seed | " + " | ".join(f"RGR vs {names[r]}" for r in refs)
        + " | fixes / breaks | sign p | copied |",
        "|---|---:|---|" + "---:|" * len(refs) + "---:|---:|---:|",
    ]  # fmt: skip
    for run in RUNS:
        view = summary["accuracy"].get(run)
        per_seed = ", ".join(_pct(v) for v in view["per_seed"]) if view else "n/a"
        accuracy = _mean_sd(view) + (_ci(view["ci95"]) if view else "")
        cells = [_rgr_cell(rgr[ref].get(run)) for ref in refs]
        test = summary["paired_vs_teacher"].get(run, {}).get("pooled") if run != "teacher" else None
        tail = (
            ["", "", ""]
            if test is None
            else [
                f"{test['fixes']} / {test['breaks']}",
                _p(test["sign_test_p"]),
                "n/a" if test["copied_share"] is None else f"{100 * test['copied_share']:.0f}%",
            ]
        )
        lines.append(f"| {LABELS[run]} | {accuracy} | {per_seed} | {' | '.join([*cells, *tail])} |")
    lines += [
        "",
        "RGR of the seed means (the ratio of the mean gains: `w2sr report`'s main figure), pooled 95% interval:",
        "",
        "| model | " + " | ".join(f"vs {names[r]}" for r in refs) + " |",
        "|---|" + "---:|" * len(refs),
    ]
    for run in RUNS:
        views = [rgr[ref].get(run) for ref in refs]
        if any(v is not None for v in views):
            lines.append(
                f"| {LABELS[run]} | "
                + " | ".join("" if v is None else _pct(v["rgr"]) + _ci(v["ci95"], 0) for v in views)
                + " |"
            )
    lines += ["", *cost_markdown(summary)]
    sizes, skill = summary["variant_sizes"], summary["latent_skill"]
    kept = summary["rl_traces_kept"]["mean"]
    lines += [
        "",
        f"Teacher's greedy traces on the pool: {_mean_sd(summary['teacher_trace_accuracy'], sd='std')} % correct; "
        f"training set sizes (mean): W2SR {sizes['W2SR']['mean']:.0f}, W2SR-P {sizes['W2SR-P']['mean']:.0f}, W2SR-N "
        f"{sizes['W2SR-N']['mean']:.0f} traces. The prior's own samples: "
        f"{_mean_sd(summary['rl_trace_accuracy'], sd='std')} % correct, {kept or 0:.0f} kept (mean) for the RL-like "
        f"reference; of them {_mean_sd(skill['step_by_step_share'], sd='std')} % solve step by step, "
        f"{_mean_sd(skill['step_by_step_accuracy'], sd='std')} % of those right (answer-only samples: "
        f"{_mean_sd(skill['answer_only_accuracy'], sd='std')} % right).",
    ]
    rewards = [r for r in summary["grpo_rewards"] if r]
    if rewards:
        lines += [
            "",
            "GRPO's training reward (mean of the first / last steps), per seed: "
            + ", ".join(
                f"{seed}: {r['first']:.2f} -> {r['last']:.2f} ({r['steps']} steps)"
                for seed, r in zip(summary["seeds"], summary["grpo_rewards"])
                if r
            )
            + ".",
        ]
    return "\n".join(lines) + "\n"


def cost_markdown(summary: dict[str, Any]) -> list[str]:
    """Per seed and W2SR variant: each arm's CPU seconds and FLOPs and the W2SR / GRPO ratios, the teacher counted
    as given (the paper) and with its training added."""
    rows = [
        (seed, variant, entry, cost["rl"])
        for seed, cost in zip(summary["seeds"], summary["cost"]["per_seed"])
        if cost
        for variant, entry in cost["variants"].items()
    ]
    if not rows:
        return []
    lines = [
        "Cost of each arm (per seed `report-grpo/report.json`: the W2SR arm = teacher generation + verification + "
        "SFT, the teacher given; RL = the GRPO fit; FLOPs: 2N per generated token + 6N per trained token; "
        '"+ teacher\'s fit" adds `fits/teacher/cost.json`):',
        "",
        "| seed | W2SR arm | W2SR CPU s | GRPO CPU s | W2SR FLOPs | GRPO FLOPs | ratio CPU s | ratio FLOPs "
        "| + teacher's fit: ratio CPU s | ratio FLOPs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for seed, variant, entry, rl in rows:
        given, ratio = entry["teacher_given"], entry.get("ratio_teacher_given") or {}
        trained = entry.get("ratio_with_teacher_fit") or {}
        lines.append(
            f"| {seed} | {LABELS.get(variant, variant)} | {given['cpu_seconds']:.1f} | "
            f"{rl['cpu_seconds'] if rl else float('nan'):.1f} | {_num(given['flops'])} | "
            f"{_num(rl['flops'] if rl else None)} | {_times(ratio.get('cpu_seconds'))} | {_times(ratio.get('flops'))} "
            f"| {_times(trained.get('cpu_seconds'))} | {_times(trained.get('flops'))} |"
        )
    return lines


def chart(summary: dict[str, Any], path: Path) -> None:
    """Each W2SR variant's gap to the teacher per seed (the paired view: the seeds' teachers differ widely), and the
    paper's two numbers per seed: RGR against GRPO beside the W2SR / GRPO cost ratio (FLOPs, the teacher given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gap_ax, cost_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    colors = {"w2sr": "#4c72b0", "w2sr-p": "#55a868", "w2sr-n": "#c44e52"}
    teachers = (summary["accuracy"].get("teacher") or {}).get("per_seed") or []
    for x, run in enumerate(VARIANTS):
        view = summary["accuracy"].get(run)
        if view is None:
            continue
        gaps = [(i, 100 * (v - t)) for i, (v, t) in enumerate(zip(view["per_seed"], teachers)) if None not in (v, t)]
        xs = [x + 0.12 * (i - 1) for i, _ in gaps]
        gap_ax.scatter(xs, [g for _, g in gaps], color=colors[run], s=18, zorder=3)
        for (i, g), px in zip(gaps, xs):
            label = summary["seeds"][i].removeprefix("seed")
            gap_ax.annotate(label, (px, g), fontsize=6, xytext=(3, 0), textcoords="offset points", va="center")
    gap_ax.axhline(0, color="#999999", ls="--", lw=1)
    gap_ax.set_xticks(range(len(VARIANTS)), [LABELS[r] for r in VARIANTS], fontsize=8)
    gap_ax.set_ylabel("accuracy − teacher's (points)", fontsize=8)
    gap_ax.set_title("vs the teacher, per seed", fontsize=10)
    grpo = summary["rgr"].get("grpo", {})
    for run in VARIANTS:
        view = grpo.get(run)
        if view is None:
            continue
        points = []
        for i, cost in enumerate(summary["cost"]["per_seed"]):
            entry = (cost or {}).get("variants", {}).get(run) or {}
            flops = (entry.get("ratio_teacher_given") or {}).get("flops")
            value = view["per_seed"][i] if i < len(view["per_seed"]) else None
            if flops is not None and value is not None:
                points.append((flops, 100 * value))
        cost_ax.scatter([p[0] for p in points], [p[1] for p in points], color=colors[run], s=22, label=LABELS[run])
    cost_ax.axhline(94, color="#999999", ls=":", lw=1, label="the paper's ~94%")
    cost_ax.axvline(1, color="#dddddd", lw=1)
    cost_ax.set_xscale("log")
    cost_ax.set_xlabel("cost W2SR / GRPO (FLOPs, teacher given; < 1: W2SR cheaper)", fontsize=8)
    cost_ax.set_ylabel("RGR against GRPO (%)", fontsize=8)
    cost_ax.set_title("the paper's two numbers, per seed", fontsize=10)
    cost_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("seed_folders", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, required=True, help="the study folder (its report-<reference>/ read)")
    args = parser.parse_args(argv)
    summary = aggregate(args.output, args.seed_folders)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (args.output / "summary.md").write_text(markdown(summary), encoding="utf-8")
    chart(summary, args.output / "summary.png")
    print(markdown(summary))


if __name__ == "__main__":
    main()
