"""Resume overhead of ``w2sr generate --resume true``: read a 100k-record output and skip the pairs already done.

Builds a traces file of realistic records (MATH-like problem, the qwen-base prompt messages, a ~2,000-character
completion: ~2.7 KB per line) with a torn last line, then times what a resumed run does before generating: cut the
torn tail, scan every (id, sample) pair, and build the requests still to do for the full problem list (all done but
the last 1%). Target: <= 5 s of wall time; ``cpu_seconds`` and the load average are recorded too, since
the 2-core machine these figures come from is shared with other jobs.
Writes ``benchmarks/results/generate_resume.json``.

Run: ``python benchmarks/generate_resume.py [--records 100000]`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from w2sr.generation.base import SamplingOptions  # noqa: E402
from w2sr.generation.store import repair_torn_tail, scan  # noqa: E402
from w2sr.records.jsonl import dumps  # noqa: E402
from w2sr.records.problems import Problem  # noqa: E402
from w2sr.records.prompts import build_messages  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=4, help="samples per problem")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "generate_resume.json"))
    args = parser.parse_args()
    n_problems = args.records // args.samples
    problems = [
        Problem(
            id=f"math-{i:06d}",
            problem=f"Find all real $x$ such that $x^2 - {i}x + 1 = 0$. " * 3,
            answer=str(i),
            source="math",
            extras={"level": "Level 5", "type": "Algebra"},
        )
        for i in range(n_problems + n_problems // 100)
    ]
    completion = (
        "We start by writing the quadratic formula: $x = \\frac{-b \\pm \\sqrt{b^2-4ac}}{2a}$. " * 22 + "\\boxed{42}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "traces.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for problem in problems[:n_problems]:
                messages = build_messages(problem.problem)
                handle.write(
                    "".join(
                        dumps(
                            {
                                **problem.to_dict(),
                                "sample": s,
                                "teacher": "teacher",
                                "prompt": messages,
                                "completion": completion,
                                "finish_reason": "stop",
                                "completion_tokens": 600,
                            }
                        )
                        + "\n"
                        for s in range(args.samples)
                    )
                )
            handle.write('{"id": "math-torn", "problem": "cut by a ki')
        size = path.stat().st_size
        os.sync()
        load = os.getloadavg()[0]
        started, cpu = time.perf_counter(), time.process_time()
        torn = repair_torn_tail(path)
        result = scan(path)
        sampling = SamplingOptions(n=args.samples, temperature=1.0)
        todo = [(p.id, s) for p in problems for s in range(sampling.n) if (p.id, s) not in result.done]
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    figures = {
        "records": result.records,
        "file_mb": round(size / 2**20, 1),
        "torn_bytes_dropped": torn,
        "pairs_left": len(todo),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "load_average_1min": round(load, 1),
        "records_per_s": round(result.records / seconds),
        "target_seconds": 5.0,
        "meets_target": seconds <= 5.0,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
