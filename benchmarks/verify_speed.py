"""Verification throughput, like for like: serial math-verify vs ``verify_records`` vs the ``w2sr verify`` command.

All three grade the same input: MATH test problems whose completion is the answer w2sr extracts from the gold
solution, written as ``\\boxed{answer}``, against the gold answer (the last box of the solution). Every side does the
same work per answer: extract the answer from the completion (``w2sr.verification.extract.extract_answer``), parse
it, and verify it against the parsed gold, with each distinct gold parsed once (the serial loop caches parsed gold
too, as the workers do). The serial baseline runs in one process with math-verify's own (signal) timeouts;
``verify_records`` adds per-answer deadlines in killable worker processes (start-up included in its time); the ``w2sr
verify`` row times the whole command as a separate process (Python and Lightning start-up, reading and writing JSONL,
the summary). Writes ``benchmarks/results/verify_speed.json`` with the command that produced it.

Run: ``python benchmarks/verify_speed.py [--limit 5000] [--workers 2]`` from the repository root (needs ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from w2sr.verification.extract import extract_answer  # noqa: E402
from w2sr.verification.gold import normalize_gold  # noqa: E402
from w2sr.verification.grade import VerifyOptions, verify_records  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "math" / "test.jsonl"


def serial_baseline(golds: list[str], completions: list[str]) -> tuple[float, int]:
    """The usual single-process loop, doing what a worker does: extract, parse (gold once), verify."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    start = time.perf_counter()
    parsed_gold: dict[str, list] = {}
    correct = 0
    for gold, completion in zip(golds, completions):
        if gold not in parsed_gold:
            parsed_gold[gold] = parse("\\boxed{" + gold + "}")
        answer = extract_answer(completion)
        if answer is not None and parsed_gold[gold]:
            correct += bool(verify(parsed_gold[gold], parse("\\boxed{" + answer + "}")))
    return time.perf_counter() - start, correct


def time_command(records: list[dict], workers: int) -> tuple[float, int]:
    """``w2sr verify`` on the same records, as its own process; wall seconds and answers verified correct."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "w2sr.cli",
                "verify",
                "--input",
                str(src),
                "--output",
                str(out),
                "--workers",
                str(workers),
                "--trainer.logger",
                "false",
            ],
            check=True,
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - start
        correct = sum(json.loads(line)["correct"] is True for line in out.open(encoding="utf-8"))
    return seconds, correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=5000, help="answers to grade (default: all 5,000 of MATH test)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "verify_speed.json"))
    args = parser.parse_args()
    rows = [json.loads(line) for line in DATA.open(encoding="utf-8")][: args.limit]
    golds, completions = [], []
    for row in rows:
        gold, answer = normalize_gold(row["solution"], "math"), extract_answer(row["solution"])
        if gold is not None and answer is not None:
            golds.append(gold)
            completions.append("\\boxed{" + answer + "}")
    # the gold is already an answer (not a solution): MATH-500's rules take it as it is
    records = [
        {"id": str(i), "answer": gold, "source": "math500", "completion": completion}
        for i, (gold, completion) in enumerate(zip(golds, completions))
    ]
    n = len(records)

    load_before = [round(x, 2) for x in os.getloadavg()]
    serial_s, serial_correct = serial_baseline(golds, completions)
    start = time.perf_counter()
    out = verify_records(records, VerifyOptions(workers=args.workers, timeout=5.0))
    pool_s = time.perf_counter() - start
    pool_correct = sum(r["correct"] is True for r in out)
    start = time.perf_counter()
    verify_records(records, VerifyOptions(workers=1, timeout=5.0))
    one_s = time.perf_counter() - start
    command_s, command_correct = time_command(records, args.workers)

    def row(seconds: float, **extra: object) -> dict:
        return {"seconds": round(seconds, 2), "answers_per_second": round(n / seconds, 1), **extra}

    result = {
        "command": " ".join(["python", "benchmarks/verify_speed.py", *sys.argv[1:]]),
        "answers": n,
        "data": "MATH test (../shared/data/math/test.jsonl): completion = \\boxed{answer extracted from the gold "
        "solution}, gold = the solution's last box; same input and same extraction on every side",
        "load_average_before": load_before,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "note": "2 shared CPU cores; other jobs may have been running (see the load averages)",
        },
        "serial_math_verify": row(serial_s, correct=serial_correct, gold_parsed_once=True),
        "w2sr_verify_records": row(pool_s, workers=args.workers, correct=pool_correct, includes_worker_startup=True),
        "w2sr_verify_records_1_worker": row(one_s, workers=1),
        "w2sr_verify_command": row(
            command_s,
            workers=args.workers,
            correct=command_correct,
            includes="process start-up, imports, reading and writing JSONL",
        ),
        "speedup_records_over_serial": round(serial_s / pool_s, 2),
        "speedup_command_over_serial": round(serial_s / command_s, 2),
        "speedup_2_workers_over_1": round(one_s / pool_s, 2),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
