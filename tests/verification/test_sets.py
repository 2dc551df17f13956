"""Comma lists on real MATH problems: sets of roots / solutions accept any order (math-verify's set semantics);
ordered pairs, points, tuples, intervals and "in increasing order" lists reject a permutation.

Each case is a real problem of ../shared/data (MATH-500, or MATH test where MATH-500 has no such case) with its real
gold; the prediction is what a model would box. Run: ``pytest tests/verification/test_sets.py``.
"""

from __future__ import annotations

import json

import pytest
from conftest import shared_file

from w2sr.verification.equivalence import asks_for_order, asks_for_set, list_is_ordered, prepare_pair
from w2sr.verification.grade import VerifyOptions, verify_records

# (file, unique_id, boxed prediction, expected)
SETS = [  # sets of roots / solutions: a permutation is right, a missing or extra element is wrong
    ("math500", "test/intermediate_algebra/428.json", "7, 3, 5", True),  # "Find the roots of ..." (no "all")
    ("math500", "test/intermediate_algebra/428.json", "5, 7, 3", True),
    ("math500", "test/intermediate_algebra/428.json", "x = 7, x = 3, x = 5", True),
    ("math500", "test/intermediate_algebra/428.json", "3, 5", False),
    ("math500", "test/intermediate_algebra/428.json", "3, 5, 8", False),
    ("math500", "test/intermediate_algebra/1102.json", "1, -2", True),  # "Enter all the integer roots"
    ("math500", "test/intermediate_algebra/1102.json", "1, 2", False),
    ("math500", "test/intermediate_algebra/1388.json", "-2, 1", True),  # "Enter all such integers"
    ("math500", "test/intermediate_algebra/2015.json", "\\{-2, 1-\\sqrt{5}, 1+\\sqrt{5}\\}", True),  # unordered set
    ("math500", "test/intermediate_algebra/2015.json", "-2, 1+\\sqrt{5}, 1-\\sqrt{5}", True),
    ("math500", "test/intermediate_algebra/2015.json", "\\{2, 1-\\sqrt{5}, 1+\\sqrt{5}\\}", False),
    ("math", "test/intermediate_algebra/1044.json", "-7, 9", True),  # "Find the real roots of ..."
    ("math", "test/intermediate_algebra/983.json", "-3i, 3i", True),  # "compute the two roots of ..."
    ("math", "test/intermediate_algebra/983.json", "3i, 3", False),
]
ORDERED = [  # ordered objects: the gold's order is right, a permutation (as a tuple or a bare list) is wrong
    ("math500", "test/precalculus/807.json", "\\left(3, \\frac{\\pi}{2}\\right)", True),  # polar (r, theta)
    ("math500", "test/precalculus/807.json", "\\left(\\frac{\\pi}{2}, 3\\right)", False),
    ("math500", "test/precalculus/807.json", "\\frac{\\pi}{2}, 3", False),
    ("math500", "test/intermediate_algebra/956.json", "(6, 31, -1)", True),  # ordered triple (p, q, r)
    ("math500", "test/intermediate_algebra/956.json", "(31, 6, -1)", False),
    ("math500", "test/intermediate_algebra/956.json", "31, 6, -1", False),
    ("math500", "test/intermediate_algebra/956.json", "(-1, 6, 31)", False),
    ("math500", "test/intermediate_algebra/47.json", "-2, 1", True),  # ordered pair (a, b)
    ("math500", "test/intermediate_algebra/47.json", "(1, -2)", False),
    ("math500", "test/intermediate_algebra/47.json", "1, -2", False),
    ("math500", "test/intermediate_algebra/47.json", "b = 1, a = -2", False),
    ("math500", "test/algebra/864.json", "(6, -1)", False),  # midpoint (x, y)
    ("math500", "test/geometry/1108.json", "(4, 2)", False),  # a point
    ("math500", "test/geometry/1108.json", "4, 2", False),
    ("math500", "test/intermediate_algebra/690.json", "(-16, 1, -4, 43)", False),  # ordered quadruple
    ("math500", "test/intermediate_algebra/558.json", "(4, 3]", False),  # intervals
    ("math500", "test/algebra/2486.json", "\\left(\\frac{8}{3}, \\frac{3}{5}\\right]", False),
    ("math500", "test/algebra/1078.json", "(\\sqrt{3}, -\\sqrt{3})", False),
    ("math500", "test/algebra/1078.json", "\\sqrt{3}, -\\sqrt{3}", False),
    ("math", "test/algebra/1060.json", "12, 10, 6", True),  # "all ..., in decreasing order"
    ("math", "test/algebra/1060.json", "6, 10, 12", False),
    ("math", "test/algebra/32.json", "7, 9, 12, 13", True),  # "the four integers in increasing order"
    ("math", "test/algebra/32.json", "13, 12, 9, 7", False),
]
FILES = {"math500": "math500/test.jsonl", "math": "math/test.jsonl"}


def _problems(name: str) -> dict[str, dict]:
    return {row["unique_id"]: row for row in map(json.loads, shared_file(FILES[name]).open(encoding="utf-8"))}


def _records(cases: list[tuple[str, str, str, bool]]) -> list[dict]:
    tables = {name: _problems(name) for name in {case[0] for case in cases}}
    records = []
    for i, (name, uid, boxed, _) in enumerate(cases):
        row = tables[name][uid]
        gold, source = (row["answer"], "math500") if name == "math500" else (row["solution"], "math")
        records.append(
            {
                "id": i,
                "problem": row["problem"],
                "answer": gold,
                "source": source,
                "completion": f"Reasoning step by step... so the answer is $\\boxed{{{boxed}}}$.",
            }
        )
    return records


@pytest.mark.parametrize("cases", [SETS, ORDERED], ids=["sets_accept_permutations", "ordered_reject_permutations"])
def test_real_math_lists(cases: list[tuple[str, str, str, bool]]) -> None:
    out = verify_records(_records(cases), VerifyOptions(timeout=30))
    wrong = [
        f"{c[1]}: {c[2]!r} expected {c[3]} got {o['correct']} ({o['verify_status']})"
        for c, o in zip(cases, out)
        if o["correct"] is not c[3]
    ]
    assert wrong == [], "\n".join(wrong)


def test_every_math500_gold_verifies_against_itself_with_its_question() -> None:
    """The ordering rules read the question; no real gold may stop matching itself because of them."""
    rows = list(_problems("math500").values())
    records = [
        {
            "id": r["unique_id"],
            "problem": r["problem"],
            "answer": r["answer"],
            "source": "math500",
            "completion": f"so $\\boxed{{{r['answer']}}}$.",
        }
        for r in rows
    ]
    out = verify_records(records, VerifyOptions(workers=2, timeout=60))
    assert [o["id"] for o in out if o["correct"] is not True] == []


def test_the_question_decides_how_a_list_is_read() -> None:
    # real phrasings (MATH test / train)
    assert asks_for_set("Find the roots of $(x - 3)^3 + (x -7)^3 = (2x - 10)^3.$")
    assert asks_for_set("compute the two roots of $f(x) + g(x) = 0.$")
    assert asks_for_set("Enter all the integer roots, separated by commas.")
    assert asks_for_set('(Give your answer as a comma-separated list, in either order; for example, "2, 5")')
    assert not asks_for_set("Find the sum of the roots of $x^2 - 5x + 6$.")  # one number, not a list
    assert not asks_for_set("Find $a$ and $b$ if the roots of $x^2 + ax + b$ are 2 and 3.")
    assert asks_for_order("What are the four integers in increasing order?")
    assert asks_for_order("List Trisha's five test scores from the greatest to the least, separated by commas.")
    assert asks_for_order("Enter the ordered pair $(a,b).$")
    assert not asks_for_order("$\\cos a,$ $\\cos 2a,$ and $\\cos 3a$ form an arithmetic sequence, in that order.")
    assert not asks_for_order("The numbers are not necessarily in increasing order.  Enter all possible values.")
    assert not asks_for_order("In order to win, find all $x$.")
    # the rules in order: a sequence beats "all"; one ordered pair of plain values is ordered; "all ordered pairs"
    # with tuple parts is a set of tuples; a set question is a set; anything else with a question stays in order
    decreasing = "Find all positive integer values of $c$. Express them in decreasing order, separated by commas."
    assert list_is_ordered(decreasing, ["12", "10", "6"]) is True
    assert list_is_ordered("Enter the ordered pair $(a,b).$", ["1", "2"]) is True
    assert list_is_ordered("Find all ordered pairs $(a,b)$.", ["(1, 2)", "(3, 4)"]) is False
    assert list_is_ordered("Find the roots of $x^2 - 5x + 6$.", ["2", "3"]) is False
    assert list_is_ordered("Find $a$ and $b$.", ["1", "2"]) is True
    assert list_is_ordered(None, ["1", "2"]) is None


def test_prepare_pair_roots_and_tuples_of_tuples() -> None:
    roots = "Find the roots of $(x - 3)^3 + (x -7)^3 = (2x - 10)^3.$"
    assert prepare_pair("7, 3, 5", "3, 5, 7", roots) == ("7, 3, 5", "3, 5, 7", None)  # left as a set
    pairs = "Find all ordered pairs $(x,y)$ of real numbers such that ... Enter all the solutions, separated by commas."
    records = [
        {"id": i, "problem": pairs, "answer": "(1, 2), (3, 4)", "completion": f"\\boxed{{{text}}}"}
        for i, text in enumerate(["(3, 4), (1, 2)", "(2, 1), (4, 3)"])
    ]
    assert [o["correct"] for o in verify_records(records, VerifyOptions())] == [True, False]
