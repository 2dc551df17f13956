"""The overlap of the paper's training pool (MATH train levels 3-5) with MATH-500, measured three ways, and what a
pool grown with MATH test brings in. Writes ``benchmarks/results/decontamination.json``.

1. ``w2sr decontaminate`` itself (the command line is in the JSON): exact matches after normalisation and open-r1's
   8-word n-gram check; also the n-gram check at 10, 13 and 20 words (the same index, in-process).
2. Near-variants: ``w2sr decontaminate --ngram 0 --similarity 0.8``, a training problem whose normalised text has
   a character-level ``difflib`` ratio >= 0.8 with a MATH-500 problem; how many have the same gold answer (the
   training solution's gold against the MATH-500 ``answer``, by math-verify), and how many the n-gram check drops.
3. MATH train + test levels 3-5 without the MATH-500 problems (a pool near the paper's ~8.5k), and the MATH-500
   problems that MATH test levels 3-5 hold verbatim (``w2sr decontaminate`` on MATH test levels 3-5).

Run from the repository root: ``python benchmarks/decontamination.py [--data ../shared/data]`` (about 110
CPU-seconds on a 2-core machine, most of it the pairwise ratios).
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
    subprocess.run(
        [sys.executable, "-m", "w2sr.cli", *args], check=True, env=env, capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - start
    after = os.times()
    report = json.loads(Path(args[args.index("--output") + 1] + ".report.json").read_text(encoding="utf-8"))
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {**report, "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2)}


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
    parser.add_argument("--data", default="../shared/data", help="the benchmark folder (relative: to the repository)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "decontamination.json"))
    args = parser.parse_args()
    data = ROOT / args.data
    load = os.getloadavg()[0]
    times_start, wall_start = os.times(), time.perf_counter()
    train = [r for r in _rows(data / "math" / "train.jsonl") if r["level"] in LEVELS]
    test = [r for r in _rows(data / "math" / "test.jsonl") if r["level"] in LEVELS]
    bench = {r["unique_id"]: r for r in _rows(data / "math500" / "test.jsonl")}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"train": Path(tmp) / "math_train_l3-5.jsonl", "test": Path(tmp) / "math_test_l3-5.jsonl"}
        for name, rows in (("train", train), ("test", test)):
            files[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        for run, name, extra in (
            ("train_8gram", "train", []),
            ("train_similar", "train", ["--ngram", "0", "--similarity", str(SIMILARITY)]),
            ("test_8gram", "test", []),
        ):
            argv = ["decontaminate", "--input", str(files[name]), "--output", str(Path(tmp) / f"{run}.jsonl")]
            argv += ["--benchmarks", "[math500]", "--benchmark_dir", args.data, *extra]
            runs[run] = {"command": "w2sr " + " ".join(argv).replace(tmp, "$TMP"), **run_command(argv)}
    items = [BenchmarkItem("math500", uid, r["problem"]) for uid, r in bench.items()]
    ngram_drops = {}
    for n in (8, 10, 13, 20):
        index = BenchmarkIndex(items, n)
        ngram_drops[n] = {row["unique_id"] for row in train if index.match(row["problem"]) is not None}
    assert len(ngram_drops[8]) == runs["train_8gram"]["dropped"]  # the command and the in-process index agree
    by_id = {r["unique_id"]: r for r in train}
    near = [e for e in runs["train_similar"]["dropped_records"] if e["match"] == "similar"]
    gold = same_gold([(by_id[e["id"]], bench[e["benchmark_id"]]) for e in near])
    in_bench = {normalize_problem(r["problem"]) for r in bench.values()}
    verbatim = sum(normalize_problem(r["problem"]) in in_bench for r in test)

    def summary(run: str) -> dict:
        keep = ("command", "records", "kept", "dropped", "dropped_by_match", "wall_seconds", "cpu_seconds")
        return {k: runs[run][k] for k in keep}

    results = {
        "machine": f"{platform.node()}: {os.cpu_count()} CPU cores (shared), load {load:.1f} at start",
        "pool": "MATH train levels 3-5",
        "pool_problems": len(train),
        "benchmark": "MATH-500",
        "exact_duplicates": runs["train_8gram"]["dropped_by_match"]["exact"],
        "ngram_dropped": {str(n): len(ids) for n, ids in ngram_drops.items()},
        "near_variants": {
            "definition": f"character-level difflib ratio >= {SIMILARITY} between normalised problem texts "
            "(autojunk off), w2sr decontaminate --similarity; per training problem its most similar MATH-500 problem",
            "training_problems": len(near),
            "math500_problems": len({e["benchmark_id"] for e in near}),
            "same_gold": sum(gold),
            "caught_by_ngram": {str(n): sum(e["id"] in ngram_drops[n] for e in near) for n in ngram_drops},
            "same_gold_caught_by_8gram": sum(e["id"] in ngram_drops[8] for e, same in zip(near, gold) if same),
            "same_gold_pairs": [
                {"train": e["id"], "math500": e["benchmark_id"], "similarity": e["similarity"]}
                for e, same in zip(near, gold)
                if same
            ],
        },
        "math_train_plus_test_l3_5_without_math500": len(train) + len(test) - verbatim,
        "math_test_l3_5_verbatim_in_math500": verbatim,
        "commands": {run: summary(run) for run in runs},
        "cpu_seconds": round(sum(os.times()[:4]) - sum(times_start[:4]), 1),  # this process and its children
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "script": "python benchmarks/decontamination.py",
    }
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
