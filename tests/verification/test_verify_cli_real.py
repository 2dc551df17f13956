"""`w2sr verify` on the real MATH-500 and GSM8K files, each gold solution used as the completion: >= 99% correct."""

from __future__ import annotations

import json

import pytest
from conftest import shared_file

from w2sr.cli import main
from w2sr.records.jsonl import read_jsonl, write_jsonl

pytestmark = pytest.mark.slow


def _as_traces(rows, problem_key, answer_key, solution_key, source):
    for index, row in enumerate(rows):
        yield {
            "id": f"{source}-{index}",
            "problem": row[problem_key],
            "answer": row[answer_key],
            "source": source,
            "sample": 0,
            "teacher": "gold",
            "prompt": [{"role": "user", "content": row[problem_key]}],
            "completion": row[solution_key],
            "finish_reason": "stop",
            "completion_tokens": 0,
        }


@pytest.mark.parametrize("name", ["math500", "gsm8k"])
def test_gold_solutions_verify(name, tmp_path):
    if name == "math500":
        rows = read_jsonl(shared_file("math500/test.jsonl"))
        traces = _as_traces(rows, "problem", "answer", "solution", "math500")
    else:
        rows = read_jsonl(shared_file("gsm8k/test.jsonl"))
        traces = _as_traces(rows, "question", "answer", "answer", "gsm8k")  # gold "#### N" inside the solution
    src, out, summary = tmp_path / "traces.jsonl", tmp_path / "verified.jsonl", tmp_path / "summary.json"
    write_jsonl(src, traces)
    main(
        [
            "verify",
            "--input",
            str(src),
            "--output",
            str(out),
            "--summary",
            str(summary),
            "--workers",
            "2",
            "--trainer.logger",
            "false",
        ]
    )
    verified = read_jsonl(out)
    assert len(verified) == len(rows)
    wrong = [(r["answer"], r["prediction"]) for r in verified if r["correct"] is not True]
    accuracy = 1 - len(wrong) / len(verified)
    assert accuracy >= 0.99, f"{name}: {accuracy:.4f}; first misses: {wrong[:10]}"
    assert json.loads(summary.read_text())
