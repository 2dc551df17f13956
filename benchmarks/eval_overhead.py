"""Evaluation overhead: how much of ``w2sr evaluate``'s wall time is *not* generation (verification, metrics,
writing), on MATH-500 with n = 4 samples per problem and the tiny offline model, on 2 CPU cores.

Two measurements, both written to ``benchmarks/results/eval_overhead.json``:
1. ``tiny_model_run`` — ``w2sr evaluate --benchmarks math500 --sampling.n 4`` on the tiny random model, as a user
   runs it (a subprocess); ``timing_s`` of results.json splits generate / verify / metrics / write, and the wall
   time of the command includes start-up (imports, model load).
2. ``realistic_answers`` — the tiny model rarely writes a box, so its answers cost the verifier nothing; this rescores
   4 real-looking completions per MATH-500 problem (all 500, whatever ``--limit``) (the worked solutions, with every
   other sample's final box
   replaced by a wrong or an equivalent-but-differently-written answer) through the same code (verification with
   math-verify workers, answer classes for maj@k, bootstrap, files), and relates that time to the measured
   generation time of step 1 scaled to the same number of samples.

Run from the repository root: ``python benchmarks/eval_overhead.py`` (``--limit 100`` for fewer problems,
``--max_new_tokens``; defaults: all 500 problems, 64 new tokens). The load average is recorded: the machine is
shared, so compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def realistic_records(limit: int | None) -> list[dict]:
    """4 samples per MATH-500 problem: the solution, a wrong box, an equivalent rewrite, the solution again."""
    sys.path.insert(0, str(ROOT))
    from w2sr.records.benchmarks import load_benchmark
    from w2sr.verification.extract import find_boxes

    records = []
    for problem in load_benchmark("math500", DATA, limit=limit):
        solution = problem.extras["solution"]
        start, end, content = find_boxes(solution)[-1]
        variants = [
            solution,
            solution[:start] + "\\boxed{" + content + "+1}" + solution[end:],
            solution[:start] + "\\boxed{" + problem.answer + "}" + solution[end:],
            solution[:start] + "so the answer is \\boxed{" + content + "}.",
        ]
        for index, text in enumerate(variants):
            records.append(
                {
                    **problem.to_dict(),
                    "sample": index,
                    "completion": text,
                    "benchmark": "math500",
                    "finish_reason": "stop",
                }
            )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="MATH-500 problems (default: all 500)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        subprocess.run(
            [sys.executable, "-m", "w2sr.toy", "model", "--output", str(model)],
            check=True,
            env=env,
            cwd=ROOT,
            capture_output=True,
        )
        out = Path(tmp) / "eval"
        command = [
            sys.executable,
            "-m",
            "w2sr.cli",
            "evaluate",
            "--model.model_name_or_path",
            str(model),
            "--benchmarks",
            "math500",
            "--benchmark_dir",
            str(DATA),
            "--sampling.n",
            "4",
            "--sampling.temperature",
            "0.6",
            "--sampling.top_p",
            "0.95",
            "--sampling.max_new_tokens",
            str(args.max_new_tokens),
            "--sampling.batch_size",
            "64",
            "--options.workers",
            str(args.workers),
            "--output_dir",
            str(out),
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
        ]
        if args.limit:
            command += ["--limit", str(args.limit)]
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env, cwd=ROOT, capture_output=True)
        wall = time.perf_counter() - started
        results = json.loads((out / "results.json").read_text())
        timing = results["timing_s"]
        samples = results["benchmarks"]["math500"]["samples"]

        sys.path.insert(0, str(ROOT))
        from rich.console import Console

        from w2sr.evaluation.run import score_predictions
        from w2sr.records.jsonl import write_jsonl
        from w2sr.verification.grade import VerifyOptions

        records = realistic_records(None)  # all 500 problems x 4: the full verification load
        source = Path(tmp) / "realistic.jsonl"
        write_jsonl(source, records)
        started = time.perf_counter()
        scored = score_predictions(
            [str(source)],
            Path(tmp) / "scored",
            verify=VerifyOptions(workers=args.workers),
            console=Console(file=open(os.devnull, "w")),
        )
        realistic_seconds = time.perf_counter() - started
    non_generation = timing["verify"] + timing["metrics"] + timing.get("write", 0.0)
    generation_same_size = timing["generate"] * len(records) / samples
    figures = {
        "command": "python benchmarks/eval_overhead.py"
        + (f" --limit {args.limit}" if args.limit else "")
        + f" --max_new_tokens {args.max_new_tokens}",
        "tiny_model_run": {
            "problems": results["benchmarks"]["math500"]["problems"],
            "samples": samples,
            "max_new_tokens": args.max_new_tokens,
            "wall_s": round(wall, 2),
            "timing_s": timing,
            "startup_and_model_load_s": round(wall - timing["generate"] - non_generation, 2),
            "verify_metrics_write_s": round(non_generation, 3),
            "share_of_wall": round(non_generation / wall, 4),
            "no_answer": results["benchmarks"]["math500"]["no_answer"],
        },
        "realistic_answers": {
            "samples": len(records),
            "seconds": round(realistic_seconds, 2),
            "timing_s": scored["timing_s"],
            "avg@n": scored["benchmarks"]["math500"]["avg@n"],
            "maj@k": scored["benchmarks"]["math500"]["maj@k"],
            "generation_s_same_size (scaled from the tiny run)": round(generation_same_size, 1),
            "share_of_wall": round(realistic_seconds / (realistic_seconds + generation_same_size), 4),
        },
        "target": "verification + metrics + writing <= 10% of the evaluation's wall time",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()},
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    path = ROOT / "benchmarks" / "results" / "eval_overhead.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
