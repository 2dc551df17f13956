"""Self-verification on every benchmark file in ../shared/data: each normalised gold must verify against a
model-style completion written from the raw gold, and MATH-500 / GSM8K gold *solutions* must verify as completions.

Run: ``pytest tests/verification/test_verify_benchmarks.py`` (about a minute on 2 cores; skipped when ../shared/data
is absent).

Expectations are exact: every line verifies except the ones listed in ``KNOWN_FAILURES`` (file -> {line: reason});
a new failure or a listed line that starts to pass both fail the test, so the list stays true. Today:
* math/train.jsonl lines 5530 and 5532 have an empty ``\\boxed{}`` in their solution: no gold answer, so
  ``correct`` is null (``bad_gold``); they are reported, never scored. Every other line of every file verifies.
* MATH-500 and GSM8K gold solutions as completions: 500/500, 1319/1319.
* The box w2sr takes as gold from a MATH solution equals the independently written MATH-500 ``answer`` (500/500),
  and so does the box of the same problem's solution in math/test.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from w2sr.verification.gold import normalize_gold
from w2sr.verification.grade import VerifyOptions, verify_records

DATA = Path(__file__).parents[2].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark folder {DATA} not found (read-only shared data)")
# a generous deadline: these tests check answers, not speed, and must not fail on a busy machine
OPTIONS = VerifyOptions(workers=2, answer_field="gold", timeout=60)
COT = "Let's reason step by step.\nAfter simplifying everything carefully, "


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).open(encoding="utf-8") if line.strip()]


def _style(source: str, row: dict, gold: str) -> str:
    """A completion as a model would write it, from the raw gold where the formats differ."""
    if source == "gsm8k":
        raw = row["answer"].rsplit("####", 1)[1].strip()
        return f"{COT}the total is {raw}.\n#### {raw}"
    if source in ("aime24", "aime25", "amc23"):
        return f"{COT}the final answer is $\\boxed{{{int(float(row['answer']))}}}$."
    if source == "olympiadbench":
        parts = [p.strip().strip("$") for p in row["final_answer"]]
        unit = (row.get("unit") or "").strip("$ ")
        boxed = ", ".join(f"\\boxed{{{p}{(' ' + unit) if unit.isalpha() else ''}}}" for p in parts)
        return f"{COT}the answers are {boxed}."
    return f"{COT}the final answer is $\\boxed{{{gold}}}$."


FILES = {  # file -> (gold field, source)
    "math500/test.jsonl": ("answer", "math500"),
    "math/train.jsonl": ("solution", "math"),
    "math/test.jsonl": ("solution", "math"),
    "gsm8k/train.jsonl": ("answer", "gsm8k"),
    "gsm8k/test.jsonl": ("answer", "gsm8k"),
    "aime24/test.jsonl": ("answer", "aime24"),
    "aime25/test.jsonl": ("answer", "aime25"),
    "amc23/test.jsonl": ("answer", "amc23"),
    "olympiadbench/test.jsonl": ("final_answer", "olympiadbench"),
    "minerva_math/test.jsonl": ("solution", "minerva"),
}
# file -> {1-based line: why it may not verify}; anything else failing, or a listed line passing, fails the test
KNOWN_FAILURES: dict[str, dict[int, str]] = {
    "math/train.jsonl": {
        5530: "bad_gold: the solution's only box is empty (\\boxed{})",
        5532: "bad_gold: the solution's only box is empty (\\boxed{})",
    }
}
KNOWN_BAD_GOLD = {
    name: set(lines)
    for name, lines in KNOWN_FAILURES.items()
    if all(reason.startswith("bad_gold") for reason in lines.values())
}


def test_every_file_is_covered() -> None:
    found = {str(p.relative_to(DATA)) for p in DATA.rglob("*.jsonl")}
    assert found <= set(FILES), f"benchmark files without a self-verification check: {sorted(found - set(FILES))}"


@pytest.mark.parametrize("name", sorted(FILES))
def test_gold_verifies_against_model_style_completion(name: str) -> None:
    field, source = FILES[name]
    rows = _rows(name)
    records = []
    for row in rows:
        gold = normalize_gold(row[field], source)
        records.append(
            {
                "gold": row[field],
                "source": source,
                "unit": row.get("unit"),
                "completion": _style(source, row, gold) if gold else "no gold",
            }
        )
    out = verify_records(records, OPTIONS)
    bad_gold = {i + 1 for i, r in enumerate(out) if r["correct"] is None}
    assert bad_gold == KNOWN_BAD_GOLD.get(name, set())
    failures = {
        i + 1: f"gold={normalize_gold(rows[i][field], source)!r} prediction={r['prediction']!r} "
        f"status={r['verify_status']}"
        for i, r in enumerate(out)
        if r["correct"] is not True
    }
    known = KNOWN_FAILURES.get(name, {})
    unexpected = [f"line {line}: {why}" for line, why in failures.items() if line not in known]
    assert unexpected == [], "\n".join(unexpected[:50])
    assert sorted(failures) == sorted(known), f"listed in KNOWN_FAILURES but now verify: {set(known) - set(failures)}"


@pytest.mark.parametrize(
    "name, source, solution_field",
    [("math500/test.jsonl", "math500", "solution"), ("gsm8k/test.jsonl", "gsm8k", "answer")],
)
def test_gold_solutions_verify(name: str, source: str, solution_field: str) -> None:
    rows = _rows(name)
    records = [{"gold": row["answer"], "source": source, "completion": row[solution_field]} for row in rows]
    out = verify_records(records, OPTIONS)
    failures = [
        f"line {i + 1}: gold={rows[i]['answer']!r} prediction={r['prediction']!r} status={r['verify_status']}"
        for i, r in enumerate(out)
        if r["correct"] is not True
    ]
    assert failures == [], "\n".join(failures)


def test_gold_taken_from_math_solutions_matches_the_independent_answers() -> None:
    """The box w2sr takes from a MATH-style solution (the gold of math/train, math/test, Minerva) equals the
    independently written ``answer`` of MATH-500, for MATH-500's own solutions and for the same problems' solutions
    in math/test.jsonl (a wrong box choice, e.g. the first box instead of the last, fails here)."""
    math500 = _rows("math500/test.jsonl")
    answers = {row["problem"]: row["answer"] for row in math500}
    pairs = [(row["answer"], row["solution"], f"math500 line {i + 1}") for i, row in enumerate(math500)]
    pairs += [
        (answers[row["problem"]], row["solution"], f"math/test line {i + 1}")
        for i, row in enumerate(_rows("math/test.jsonl"))
        if row["problem"] in answers
    ]
    assert len(pairs) >= 900
    records = [
        {"gold": answer, "source": "math500", "completion": f"\\boxed{{{normalize_gold(solution, 'math')}}}"}
        for answer, solution, _ in pairs
    ]
    out = verify_records(records, OPTIONS)
    failures = [
        f"{where}: answer={answer!r} box taken from the solution={normalize_gold(solution, 'math')!r}"
        for (answer, solution, where), r in zip(pairs, out)
        if r["correct"] is not True
    ]
    assert failures == [], "\n".join(failures)
