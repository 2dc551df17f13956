"""The overlap of the paper's training pool (MATH train levels 3-5) with MATH-500, measured three ways, and what a
pool grown with MATH test brings in. Writes ``benchmarks/results/decontamination.json``.

1. ``w2sr decontaminate`` itself (the command line is in the JSON): exact matches after normalisation and open-r1's
   8-word n-gram check; also the n-gram check at 10, 13 and 20 words (the same index, in-process).
2. Near-variants: a training problem whose normalised text has a character-level ``difflib`` ratio >= 0.8 with a
   MATH-500 problem (``SequenceMatcher(autojunk=False)``; ``real_quick_ratio`` / ``quick_ratio`` prune pairs exactly,
   they are upper bounds), how many have the same gold answer (the training solution's last box against the MATH-500
   ``answer``, by math-verify), and how many of them the n-gram check drops.
3. MATH train + test levels 3-5 without the MATH-500 problems (a pool near the paper's ~8.5k), and the MATH-500
   problems that MATH test levels 3-5 hold verbatim (``w2sr decontaminate`` on MATH test levels 3-5).

Run from the repository root: ``python benchmarks/decontamination.py [--data ../shared/data]`` (about a minute of
CPU, most of it the pairwise ratios).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from w2sr.records.decontaminate import (  # noqa: E402
    BenchmarkIndex,
    BenchmarkItem,
    normalize_problem,
)
from w2sr.verification.gold import normalize_gold  # noqa: E402
from w2sr.verification.grade import VerifyOptions, verify_records  # noqa: E402

LEVELS = ("Level 3", "Level 4", "Level 5")
SIMILARITY = 0.8


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def run_command(args: list[str]) -> dict:
    """``w2sr <args>`` as its own process: wall and CPU seconds, and its report."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = os.times()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "w2sr.cli", *args], check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = os.times()
    report = json.loads(Path(args[args.index("--output") + 1] + ".report.json").read_text(encoding="utf-8"))
    counts = {k: report[k] for k in ("records", "kept", "dropped", "dropped_by_match")}
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {**counts, "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2)}


def near_variants(train: list[dict], bench: list[dict]) -> dict[int, tuple[float, int]]:
    """Training row index -> (best ratio >= SIMILARITY, MATH-500 row index)."""
    left = [normalize_problem(r["problem"]) for r in train]
    best: dict[int, tuple[float, int]] = {}
    for j, row in enumerate(bench):
        matcher = difflib.SequenceMatcher(None, autojunk=False)
        matcher.set_seq2(normalize_problem(row["problem"]))  # b's index is built once per MATH-500 problem
        for i, text in enumerate(left):
            matcher.set_seq1(text)
            if matcher.real_quick_ratio() < SIMILARITY or matcher.quick_ratio() < SIMILARITY:
                continue
            ratio = matcher.ratio()
            if ratio >= SIMILARITY and ratio > best.get(i, (0.0, -1))[0]:
                best[i] = (ratio, j)
    return best


def same_gold(pairs: list[tuple[dict, dict]]) -> list[bool]:
    """The training solution's gold (its last box, as the paper's grader reads it) equals the MATH-500 answer."""
    records = [
        {
            "answer": b["answer"],
            "source": "math500",
            "completion": f"\\boxed{{{normalize_gold(a['solution'], 'math')}}}",
        }
        for a, b in pairs
    ]
    return [r["correct"] is True for r in verify_records(records, VerifyOptions(workers=2, timeout=30))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the benchmark folder")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "decontamination.json"))
    args = parser.parse_args()
    data = Path(args.data)
    load = os.getloadavg()[0]
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    train = [r for r in _rows(data / "math" / "train.jsonl") if r["level"] in LEVELS]
    test = [r for r in _rows(data / "math" / "test.jsonl") if r["level"] in LEVELS]
    bench = _rows(data / "math500" / "test.jsonl")
    results: dict = {"machine": f"{platform.node()}: {os.cpu_count()} CPU cores (shared), load {load:.1f} at start"}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"train": Path(tmp) / "math_train_l3-5.jsonl", "test": Path(tmp) / "math_test_l3-5.jsonl"}
        for name, rows in (("train", train), ("test", test)):
            files[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        commands = {}
        for name in ("train", "test"):
            argv = ["decontaminate", "--input", str(files[name]), "--output", str(Path(tmp) / f"{name}.kept.jsonl")]
            argv += ["--benchmarks", "[math500]", "--benchmark_dir", str(data)]
            commands[name] = {"command": "w2sr " + " ".join(argv).replace(tmp, "$TMP"), **run_command(argv)}
    items = [BenchmarkItem("math500", r["unique_id"], r["problem"]) for r in bench]
    ngram_drops = {}
    for n in (8, 10, 13, 20):
        index = BenchmarkIndex(items, n)
        ngram_drops[n] = {i for i, row in enumerate(train) if index.match(row["problem"]) is not None}
    near = near_variants(train, bench)
    near_rows = sorted(near)
    gold = same_gold([(train[i], bench[near[i][1]]) for i in near_rows])
    test_in_bench = {normalize_problem(r["problem"]) for r in bench}
    verbatim = sum(normalize_problem(r["problem"]) in test_in_bench for r in test)
    results.update(
        pool="MATH train levels 3-5",
        pool_problems=len(train),
        benchmark="MATH-500",
        command_math_train_l3_5=commands["train"],
        command_math_test_l3_5=commands["test"],
        exact_duplicates=commands["train"]["dropped_by_match"]["exact"],
        ngram_dropped={str(n): len(rows) for n, rows in ngram_drops.items()},
        near_variants={
            "definition": f"character-level difflib ratio >= {SIMILARITY} between normalised problem texts "
            "(autojunk off); per training problem its most similar MATH-500 problem",
            "training_problems": len(near),
            "math500_problems": len({j for _, j in near.values()}),
            "same_gold": sum(gold),
            "dropped_by_8gram": sum(i in ngram_drops[8] for i in near_rows),
            "same_gold_examples": [
                {
                    "train": train[i]["unique_id"],
                    "math500": bench[near[i][1]]["unique_id"],
                    "ratio": round(near[i][0], 3),
                }
                for i, same in zip(near_rows, gold)
                if same
            ],
        },
        train_plus_test_l3_5_without_math500=len(train) + len(test) - verbatim,
        math_test_l3_5_verbatim_in_math500=verbatim,
        cpu_seconds=round(time.process_time() - cpu_start, 1),
        wall_seconds=round(time.perf_counter() - wall_start, 1),
        script="python benchmarks/decontamination.py",
    )
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in results.items() if k != "near_variants"}, indent=2))


if __name__ == "__main__":
    main()
