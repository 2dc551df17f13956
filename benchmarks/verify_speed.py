"""Verification throughput: ``verify_records`` with 2 worker processes vs a serial plain math-verify loop.

Both grade the same real answers: MATH test problems with their gold *solutions* as completions (gold = the last
box of the solution). The serial baseline is the usual ``verify(parse(gold), parse(completion))`` loop in one
process with math-verify's own (signal) timeouts; ``w2sr.verify`` adds extraction, per-answer deadlines in killable
worker processes and a process pool. Worker start-up is included in the w2sr time. Writes
``benchmarks/results/verify_speed.json``.

Run: ``python benchmarks/verify_speed.py [--limit 5000] [--workers 2]`` from the repository root (needs ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from w2sr.answers import normalize_gold  # noqa: E402
from w2sr.verify import VerifyOptions, verify_records  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "math" / "test.jsonl"


def serial_baseline(golds: list[str], completions: list[str]) -> tuple[float, int]:
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    start = time.perf_counter()
    correct = sum(bool(verify(parse("\\boxed{" + gold + "}"), parse(text))) for gold, text in zip(golds, completions))
    return time.perf_counter() - start, correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=5000, help="answers to grade (default: all 5,000 of MATH test)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "verify_speed.json"))
    args = parser.parse_args()
    rows = [json.loads(line) for line in DATA.open(encoding="utf-8")][: args.limit]
    golds = [normalize_gold(r["solution"], "math") for r in rows]
    keep = [i for i, g in enumerate(golds) if g is not None]
    golds = [golds[i] for i in keep]
    completions = [rows[i]["solution"] for i in keep]
    records = [{"answer": rows[i]["solution"], "source": "math", "completion": rows[i]["solution"]} for i in keep]

    load_before = [round(x, 2) for x in os.getloadavg()]
    serial_s, serial_correct = serial_baseline(golds, completions)
    options = VerifyOptions(workers=args.workers, timeout=5.0)
    start = time.perf_counter()
    out = verify_records(records, options)
    pool_s = time.perf_counter() - start
    pool_correct = sum(r["correct"] is True for r in out)

    start = time.perf_counter()
    verify_records(records, VerifyOptions(workers=1, timeout=5.0))
    one_s = time.perf_counter() - start

    n = len(records)
    result = {
        "command": "python benchmarks/verify_speed.py " + " ".join(sys.argv[1:]),
        "answers": n,
        "data": "MATH test gold solutions as completions (../shared/data/math/test.jsonl)",
        "load_average_before": load_before,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "note": "2 shared CPU cores; other jobs may have been running"},
        "serial_math_verify": {"seconds": round(serial_s, 2), "answers_per_second": round(n / serial_s, 1),
                               "correct": serial_correct},
        "w2sr_verify_records": {"workers": args.workers, "seconds": round(pool_s, 2),
                                "answers_per_second": round(n / pool_s, 1), "correct": pool_correct,
                                "includes_worker_startup": True},
        "w2sr_verify_records_1_worker": {"seconds": round(one_s, 2), "answers_per_second": round(n / one_s, 1)},
        "speedup": round(serial_s / pool_s, 2),
        "speedup_2_workers_over_1": round(one_s / pool_s, 2),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "goal_speedup": 1.8,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
