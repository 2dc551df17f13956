"""README promises about files, checked by value: a JSONL round trip gives back exactly what was written, and the
``w2sr verify`` summary and W2SR / W2SR-P / W2SR-N split files hold the counts of a hand-graded input.
"""

from __future__ import annotations

import json

from w2sr.cli import main
from w2sr.records.jsonl import read_jsonl, write_jsonl

TRICKY = [
    {"id": "1", "problem": "Compute $\\frac{1}{2} + \\sqrt{x}$.\nSecond line\r\nthird", "answer": "\\boxed{3}"},
    {"id": "2", "text": "unicode: π ≈ 3.14159, 数学, emoji 🧮, separators \u2028 and \u2029 and \x85 inside"},
    {
        "id": "3",
        "floats": [0.1, 1e-300, 1.7976931348623157e308, -2.5],
        "big": 2**63 + 1,
        "none": None,
        "bools": [True, False],
        "nested": {"a": [{"b": []}], "": "empty key"},
    },
    {"id": "4", "quotes": 'she said "hi" \\ back\\slash', "tab": "a\tb", "nul": "x\u0000y"},
]


def test_jsonl_round_trip_is_exact(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert write_jsonl(path, TRICKY) == len(TRICKY)
    assert read_jsonl(path) == TRICKY
    assert path.read_bytes().count(b"\n") == len(TRICKY)  # one record per line, whatever the strings hold
    assert "数学" in path.read_text(encoding="utf-8")  # UTF-8 kept readable, not \\u-escaped


def test_verify_summary_and_splits_hold_the_hand_graded_counts(tmp_path):
    rows = [
        {"id": "a", "answer": "4", "completion": "So $\\boxed{4}$.", "source": "math500"},  # correct
        {"id": "b", "answer": "\\frac{1}{2}", "completion": "It is \\boxed{0.5}.", "source": "math500"},  # correct
        {"id": "c", "answer": "7", "completion": "\\boxed{8}", "source": "gsm8k"},  # wrong
        {"id": "d", "answer": "7", "completion": "I am not sure.", "source": "gsm8k"},  # no answer: wrong
        {"id": "e", "answer": "", "completion": "\\boxed{1}", "source": "math500"},  # gold unparseable: null
        {"id": "f", "answer": "9", "completion": "Thus \\boxed{9}", "source": "gsm8k", "finish_reason": "length"},
    ]
    src = tmp_path / "traces.jsonl"
    write_jsonl(src, rows)
    main(
        [
            "verify",
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--split",
            str(tmp_path / "split"),
            "--summary",
            str(tmp_path / "summary.json"),
            "--trainer.logger",
            "false",
        ]
    )
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["correct"] for r in out] == [True, True, False, False, None, True]
    assert [r["prediction"] for r in out] == ["4", "0.5", "8", None, "1", "9"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    expected = {
        "records": 6,
        "problems": 6,
        "scored": 5,
        "correct": 3,
        "wrong": 2,
        "accuracy": 0.6,
        "no_answer": 1,
        "truncated": 1,
        "truncated_correct": 1,
        "bad_gold": 1,
        "timeouts": 0,
        "errors": 0,
        "variants": {"W2SR": 6, "W2SR-P": 3, "W2SR-N": 2},
    }
    assert {key: summary[key] for key in expected} == expected
    assert summary["by_source"]["gsm8k"] == {
        "records": 3,
        "scored": 3,
        "correct": 1,
        "bad_gold": 0,
        "accuracy": round(1 / 3, 6),
    }  # rates are rounded to 6 places
    assert summary["by_source"]["math500"] == {"records": 3, "scored": 2, "correct": 2, "bad_gold": 1, "accuracy": 1.0}
    splits = {
        name: [r["id"] for r in read_jsonl(tmp_path / "split" / name)]
        for name in ("w2sr.jsonl", "w2sr_p.jsonl", "w2sr_n.jsonl")
    }
    assert splits == {"w2sr.jsonl": list("abcdef"), "w2sr_p.jsonl": ["a", "b", "f"], "w2sr_n.jsonl": ["c", "d"]}
