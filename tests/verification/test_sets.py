"""Comma lists on real MATH problems: sets of roots / solutions accept any order (math-verify's set semantics);
ordered pairs, points, tuples, intervals and "in increasing order" lists reject a permutation.

Each case is a real problem of ../shared/data (MATH-500, or MATH test where MATH-500 has no such case) with its real
gold; the prediction is what a model would box. Run: ``pytest tests/verification/test_sets.py``.
"""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, shared_file

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


def _olympiadbench() -> dict[int, dict]:
    """OlympiadBench as ``w2sr evaluate --benchmarks olympiadbench`` reads it (problem = question, answer =
    final_answer, the other fields kept), by id."""
    from w2sr.records.benchmarks import load_benchmark

    shared_file("olympiadbench/test.jsonl")
    return {int(p.id): p.to_dict() for p in load_benchmark("olympiadbench", SHARED_DATA)}


def _olympiad_records(cases: list[tuple[int, str, bool]], keep_field: bool) -> list[dict]:
    rows = _olympiadbench()
    records = []
    for pid, completion, _ in cases:
        row = dict(rows[pid])
        assert row["is_multiple_answer"] is True
        if not keep_field:  # predictions scored from another harness's file: no is_multiple_answer
            row.pop("is_multiple_answer")
        records.append({**row, "completion": completion})
    return records


# (OlympiadBench id, completion, expected): golds with repeated values are multisets
MULTISETS = [
    (2532, "so $\\boxed{-2}$.", False),  # "Determine $a$ and $b$." gold -2,-2
    (2532, "so $\\boxed{-2, -2}$.", True),
    (2532, "so $a = \\boxed{-2}$ and $b = \\boxed{-2}$.", True),  # a labelled box joins the group
    (2532, "so $\\boxed{-2}$ and $\\boxed{-2}$.", True),
    (2532, "so $\\boxed{a = -2, b = -2}$.", True),
    (2356, "so $\\boxed{16, 3, 1}$.", False),  # w, d, a, b: gold 16,3,1,1
    (2356, "so $\\boxed{16, 3, 1, 1}$.", True),
    (2356, "so $\\boxed{16}, \\boxed{3}, \\boxed{1}, \\boxed{1}$.", True),
    (2356, "so $\\boxed{16, 3, 3, 1}$.", False),
]
# OlympiadBench 2282: "the list $3n^2, m^2, 2(n+1)^2$ consists of three consecutive integers written in increasing
# order. Determine all possible values of $m$." (gold 1,-1,7,-7): the sequence cue is about the problem's list, the
# answer is a set
SET_DESPITE_A_SEQUENCE_IN_THE_PROBLEM = [
    (2282, "so $\\boxed{-7, -1, 1, 7}$.", True),
    (2282, "so $\\boxed{1, -1, 7, -7}$.", True),
    (2282, "so $\\boxed{\\pm 1, \\pm 7}$.", True),
    (2282, "so $\\boxed{-7, -1, 1}$.", False),
    (2282, "so $\\boxed{1, 7}$.", False),
]


@pytest.mark.parametrize("keep_field", [True, False], ids=["with_is_multiple_answer", "without_it"])
@pytest.mark.parametrize(
    "cases", [MULTISETS, SET_DESPITE_A_SEQUENCE_IN_THE_PROBLEM], ids=["multisets", "problem_sequence_cue"]
)
def test_real_olympiadbench_lists(cases: list[tuple[int, str, bool]], keep_field: bool) -> None:
    for grader in ("default", "paper"):
        out = verify_records(_olympiad_records(cases, keep_field), VerifyOptions(timeout=30, grader=grader))
        # the paper grader reads the last box only: an answer split over several boxes is wrong there
        expected = [c[2] and (grader == "default" or c[1].count("\\boxed") == 1) for c in cases]
        wrong = [
            f"{grader}: {c[0]} {c[1]!r} expected {e} got {o['correct']} ({o['verify_status']}, {o['prediction']!r})"
            for c, e, o in zip(cases, expected, out)
            if o["correct"] is not e
        ]
        assert wrong == [], "\n".join(wrong)


def test_a_sequence_cue_counts_only_where_it_tells_how_to_write_the_answer() -> None:
    question = _olympiadbench()[2282]["problem"]
    assert asks_for_set(question) and not asks_for_order(question)
    assert list_is_ordered(question, ["1", "-1", "7", "-7"]) is False
    # the instructions of real MATH problems stay sequences, also after a sentence ending in math ("$t.$  Enter")
    assert asks_for_order("for all real numbers $t.$  Enter $f(1),$ $f(2),$ and $f(4)$ in increasing order.")
    assert asks_for_order("Find all solutions.  If there are multiple solutions, order them from least to greatest.")
    assert asks_for_order("find all possible values of $x$ and list them from least to greatest.")
    assert asks_for_order("Separate your answers using commas and express them in increasing order.")
    assert not asks_for_order("When the positive integers with exactly three positive divisors are listed in ascending")
    assert not asks_for_order(
        "Let S be the set of all three-digit numbers formed by three consecutive digits in increasing order."
    )


def test_one_answer_boxed_twice_is_one_answer() -> None:
    records = [{"id": 0, "answer": "2", "completion": "\\boxed{2} \\quad \\boxed{2}"}]
    assert verify_records(records, VerifyOptions())[0]["correct"] is True
    # a set literal is a list of its items: {1, 2} is the gold 1, 2; {1, 2, 2} is not (a multiset)
    records = [
        {"id": i, "answer": "1, 2", "completion": f"\\boxed{{{text}}}", "problem": "Find all the roots."}
        for i, text in enumerate(["\\{2, 1\\}", "\\{1, 2, 2\\}", "1, 2, 2"])
    ]
    assert [o["correct"] for o in verify_records(records, VerifyOptions())] == [True, False, False]
