"""Quickstart figures: the five stages of ``make quickstart``, timed, over several training seeds.

For each seed (``--seeds 0 1 2`` by default) this runs the embedded default exactly as ``make quickstart`` does —
``generate`` -> ``verify`` -> ``evaluate`` (before) -> ``fit --seed_everything SEED`` -> ``evaluate`` (after) — in
``runs/bench-quickstart/seed<SEED>/``, timing each stage as a whole ``w2sr`` process. Set-up (virtual environment,
``python -m w2sr.toy model``) is done once and is *not* timed. Writes ``benchmarks/results/quickstart.json`` with the
per-seed accuracies and stage times, their spread (min / mean / max), the machine and the load average before each
seed (the machine may be shared: compare timings only with a similar load).

Run from the repository root: ``python benchmarks/quickstart.py`` (about 2 minutes per seed on 2 idle CPU cores).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = "lightning_configs/quickstart"
MODEL = ".cache/w2sr-tiny"


def w2sr(*args: str) -> float:
    """Run ``w2sr ARGS`` as its own process from the repository root; return its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "w2sr.cli", *args], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 2)


def only_benchmark(results_path: Path) -> dict[str, Any]:
    """The quickstart evaluates one problem file: its row of ``results.json`` with ``accuracy`` = avg@n."""
    rows = json.loads(results_path.read_text())["benchmarks"]
    (row,) = rows.values()
    return {**row, "accuracy": row["avg@n"]}


def run_seed(seed: int, base: Path) -> dict[str, Any]:
    """The five quickstart stages with ``fit --seed_everything SEED``; accuracies and per-stage seconds."""
    out = base / f"seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rel = out.relative_to(ROOT)
    load = [round(x, 2) for x in os.getloadavg()]
    stages = {
        "generate": w2sr("generate", "--config", f"{CONFIGS}/generate.yaml", "--output", f"{rel}/traces.jsonl"),
        "verify": w2sr(
            "verify",
            "--config",
            f"{CONFIGS}/verify.yaml",
            "--input",
            f"{rel}/traces.jsonl",
            "--output",
            f"{rel}/verified.jsonl",
            "--split",
            f"{rel}/splits",
            "--summary",
            f"{rel}/verify_summary.json",
        ),
        "evaluate_before": w2sr(
            "evaluate", "--config", f"{CONFIGS}/evaluate.yaml", "--output_dir", f"{rel}/eval-before"
        ),
        "fit": w2sr(
            "fit",
            "--config",
            f"{CONFIGS}/fit.yaml",
            "--seed_everything",
            str(seed),
            "--data.train_file",
            f"{rel}/verified.jsonl",
            "--model.export_dir",
            f"{rel}/export",
            "--trainer.default_root_dir",
            str(rel),
            "--trainer.logger.init_args.save_dir",
            str(rel),
        ),
        "evaluate_after": w2sr(
            "evaluate",
            "--config",
            f"{CONFIGS}/evaluate.yaml",
            "--output_dir",
            f"{rel}/eval-after",
            "--model.model_name_or_path",
            f"{rel}/export",
        ),
    }
    before = only_benchmark(out / "eval-before" / "results.json")
    after = only_benchmark(out / "eval-after" / "results.json")
    teacher = json.loads((out / "verify_summary.json").read_text())
    curve = []
    for log in sorted((out / "fit").glob("version_*/metrics.csv"))[-1:]:
        with log.open() as handle:
            curve = [
                [int(r["step"]), float(r["val/reasoning_acc"])]
                for r in csv.DictReader(handle)
                if r.get("val/reasoning_acc")
            ]
    return {
        "seed": seed,
        "accuracy_before_fit": before["accuracy"],
        "teacher_trace_accuracy": teacher["accuracy"],
        "teacher_traces": teacher.get("records", teacher.get("problems")),
        "accuracy_after_fit": after["accuracy"],
        "held_out_problems": after["problems"],
        "val_reasoning_acc_during_fit": curve,
        "stage_seconds": stages,
        "five_stages_seconds": round(sum(stages.values()), 1),
        "load_average_before": load,
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "mean": round(statistics.fmean(values), 4), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "quickstart.json"))
    args = parser.parse_args(argv)
    if len(args.seeds) < 3:
        parser.error("give at least 3 seeds: the README quotes the seed spread")
    # set-up, not timed: the tiny random-init student and its tokenizer
    subprocess.run(
        [sys.executable, "-m", "w2sr.toy", "model", "--output", MODEL, "--overwrite"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    base = ROOT / "runs" / "bench-quickstart"
    seeds = []
    for seed in args.seeds:
        seeds.append(run_seed(seed, base))
        print(json.dumps(seeds[-1]), flush=True)
    result = {
        "command": "python benchmarks/quickstart.py --seeds " + " ".join(map(str, args.seeds)),
        "what": "the five stages of `make quickstart` (generate, verify, evaluate before, fit, evaluate after), "
        "each timed as a whole w2sr process; set-up (venv, tiny model) excluded; one run per fit seed",
        "seeds": seeds,
        "accuracy_after_fit": spread([s["accuracy_after_fit"] for s in seeds]),
        "five_stages_seconds": spread([s["five_stages_seconds"] for s in seeds]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()},
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("accuracy_after_fit", "five_stages_seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
