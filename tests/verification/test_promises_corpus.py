"""The verifier corpus (tests/data/verify_corpus.jsonl) is graded exactly as labelled: 100%, no tolerance.

The corpus says where each case comes from (``origin: hand`` or ``templated``) and holds no duplicates; the counts
are those the builder's docstring states. Rebuild with ``python tests/data/verify_corpus_build.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from w2sr.verification.grade import VerifyOptions, verify_records

CORPUS = Path(__file__).resolve().parents[1] / "data" / "verify_corpus.jsonl"


def _rows() -> list[dict]:
    return [json.loads(line) for line in CORPUS.open(encoding="utf-8")]


def test_corpus_has_no_duplicates_and_says_where_each_case_comes_from() -> None:
    rows = _rows()
    keys = Counter((json.dumps(r["gold"]), r["source"], r["completion"]) for r in rows)
    assert [k for k, n in keys.items() if n > 1] == []
    origins = Counter(r["origin"] for r in rows)
    assert origins == {"hand": 205, "templated": 280}  # as the builder's docstring says
    assert {r["expected"] for r in rows} == {True, False, None}
    hand = [r for r in rows if r["origin"] == "hand"]
    assert sum(r["expected"] is None for r in hand) >= 9 and sum(r["source"] == "gpqa" for r in hand) >= 11
    assert sum(r["completion"].count("\\boxed") >= 2 for r in hand) >= 16  # long solutions with several boxes


def test_corpus_agrees_100_percent() -> None:
    rows = _rows()
    records = [{"answer": r["gold"], "completion": r["completion"], "source": r["source"]} for r in rows]
    out = verify_records(records, VerifyOptions(workers=2, timeout=30))  # answers, not speed: no flaky deadline
    disagreements = [
        f"line {i + 1} ({r['origin']}): {r['note']}: gold={r['gold']!r} expected={r['expected']} "
        f"got={o['correct']} prediction={o['prediction']!r} status={o['verify_status']}"
        for i, (r, o) in enumerate(zip(rows, out))
        if o["correct"] is not r["expected"]
    ]
    assert disagreements == [], "\n".join(disagreements)
