"""Equivalence on real outputs: answers strong models write that string-level graders reject, each with hard
negatives (units, percentages, tuples, assignments, Unicode, ordinals, split boxes, order vs set questions)."""

from __future__ import annotations

import pytest

from w2sr.verification.equivalence import (
    asks_for_set,
    prepare_pair,
    split_top_level,
    strip_ordinal,
    text_unit,
    unicode_to_latex,
)
from w2sr.verification.grade import VerifyOptions, verify_records

PAIR = "Find $a$ and $b$."  # ordered answer
SET = "Find all solutions, separated by commas."  # a set
NUM = "How many are there?"

CASES = [  # (question, gold, boxed answer(s) as the model wrote them, expected)
    # numbers with text units or ordinals
    (NUM, "5", "\\boxed{5^{\\text{th}}}", True),
    (NUM, "5", "\\boxed{5^{th}}", True),
    (NUM, "5", "\\boxed{5\\text{th}}", True),
    (NUM, "6", "\\boxed{5^{\\text{th}}}", False),
    (NUM, "5", "\\boxed{5^{2}}", False),  # a power, not an ordinal
    (NUM, "12", "\\boxed{12 \\text{ cm}}", True),
    (NUM, "3", "\\boxed{3\\text{ days}}", True),
    (NUM, "12\\text{ cm}", "\\boxed{12}", True),
    (NUM, "12 \\text{ m}", "\\boxed{12 \\text{ cm}}", False),  # both carry a unit and they differ
    (NUM, "12\\text{ cm}^2", "\\boxed{12 \\text{ cm}^2}", True),
    (NUM, "12\\text{ cm}^2", "\\boxed{12 \\text{ cm}}", False),
    (NUM, "13", "\\boxed{12 \\text{ cm}}", False),
    # percentages
    (NUM, "50", "\\boxed{50\\%}", True),
    (NUM, "50\\%", "\\boxed{50}", True),
    (NUM, "50\\%", "\\boxed{0.5}", True),  # 50% is the number 0.5 (math-verify)
    (NUM, "5", "\\boxed{50\\%}", False),
    (NUM, "50\\%", "\\boxed{5}", False),
    # tuples, comma lists, intervals
    (PAIR, "(1, 2)", "\\boxed{1, 2}", True),
    (PAIR, "1, 2", "\\boxed{(1, 2)}", True),
    (PAIR, "1, 2", "\\boxed{(2, 1)}", False),  # order matters: the question is not a set
    (PAIR, "(1, 2)", "\\boxed{[1, 2]}", False),  # a point is not a closed interval
    (PAIR, "[1, 2]", "\\boxed{(1, 2)}", False),
    (PAIR, "(1, 2)", "\\boxed{(1, 2, 3)}", False),
    # variable assignments, in order
    (PAIR, "-2, 3", "\\boxed{a = -2, b = 3}", True),
    (PAIR, "-2, 3", "\\boxed{a=-2,\\ b=3}", True),
    (PAIR, "-2, 3", "\\boxed{a = 3, b = -2}", False),
    (PAIR, "-2, 3", "\\boxed{3, -2}", False),
    (SET, "-2, 3", "\\boxed{3, -2}", True),  # a set question: order-insensitive
    (SET, "-2, 3", "\\boxed{x = 3, x = -2}", True),
    (SET, "-2, 3", "\\boxed{3}", False),
    (SET, "-2, 3", "\\boxed{-2, 3, 4}", False),
    # Unicode math
    (NUM, "x^2 + 1", "\\boxed{x² + 1}", True),
    (NUM, "x^2 + 1", "\\boxed{x³ + 1}", False),
    (NUM, "-3", "\\boxed{−3}", True),
    (NUM, "3", "\\boxed{−3}", False),
    (NUM, "6", "\\boxed{2×3}", True),
    (NUM, "\\sqrt{2}", "\\boxed{√2}", True),
    (NUM, "3\\sqrt{2}", "\\boxed{3√2}", True),
    (NUM, "\\sqrt{3}", "\\boxed{√2}", False),
    (NUM, "2\\pi", "\\boxed{2π}", True),
    (NUM, "\\frac{\\pi}{2}", "\\boxed{π/2}", True),
    (NUM, "2\\pi", "\\boxed{π}", False),
    # answers split over adjacent boxes
    (PAIR, "7, -5", "\\boxed{7} and \\boxed{-5}", True),
    (PAIR, "7, -5", "$\\boxed{7}$, $\\boxed{-5}$", True),
    (PAIR, "7, -5", "\\boxed{-5} and \\boxed{7}", False),
    (SET, "7, -5", "\\boxed{-5} and \\boxed{7}", True),
    (SET, "7, -5", "\\boxed{7}", False),
    (SET, "7, -5", "\\boxed{7} is one root; after checking the second case carefully we get \\boxed{-5}", False),
    # plain cases stay as they were
    (NUM, "1,234", "\\boxed{1234}", True),
    (NUM, "10", "\\boxed{10}", True),
    (NUM, "\\frac{1}{2}", "\\boxed{0.5}", True),
]


def test_cases_through_the_verifier():
    records = [
        {"id": i, "problem": q, "answer": gold, "completion": f"Reasoning... so {text}."}
        for i, (q, gold, text, _) in enumerate(CASES)
    ]
    verdicts = [r["correct"] for r in verify_records(records, VerifyOptions())]
    wrong = [(CASES[i][1], CASES[i][2], CASES[i][3]) for i, v in enumerate(verdicts) if v is not CASES[i][3]]
    assert not wrong, wrong


def test_helpers():
    assert unicode_to_latex("x² − 3×y") == "x^{2} - 3\\times y"
    assert unicode_to_latex("√(x+1)") == "\\sqrt{x+1}"
    assert strip_ordinal("21^{\\text{st}}") == "21" and strip_ordinal("2nd") == "2" and strip_ordinal("x^2") == "x^2"
    assert text_unit("12 \\text{ cm}") == ("12", "cm") and text_unit("12\\mathrm{~m}") == ("12", "m")
    assert text_unit("\\text{Evelyn}") is None and text_unit("12") is None
    assert split_top_level("(1, 2), [3, 4], \\{5, 6\\}") == ["(1, 2)", "[3, 4]", "\\{5, 6\\}"]
    assert asks_for_set("Enter all the solutions") and asks_for_set("in any order")
    assert not asks_for_set("Find the ordered pair $(a,b)$.") and not asks_for_set(None)


def test_prepare_pair_forms():
    assert prepare_pair("a = -2, b = 3", "-2, 3", PAIR) == ("(-2, 3)", "(-2, 3)", None)
    assert prepare_pair("3, -2", "-2, 3", SET) == ("3, -2", "-2, 3", None)
    assert prepare_pair("3, -2", "-2, 3") == ("3, -2", "-2, 3", None)  # no question: math-verify's reading
    assert prepare_pair("1,234", "1234", PAIR)[0] == "1,234"  # thousands, not a list
    assert prepare_pair("12 \\text{ cm}", "12 \\text{ m}", NUM)[2]


def test_olympiadbench_multiple_answers_are_a_set():
    record = {
        "id": 1,
        "question": "Determine the values of $x$.",
        "final_answer": ["$2$", "$-1$"],
        "is_multiple_answer": True,
        "source": "olympiadbench",
        "completion": "\\boxed{-1}, \\boxed{2}",
    }
    (out,) = verify_records([record], VerifyOptions(answer_field="final_answer"))
    assert out["correct"] is True
    (out,) = verify_records([{**record, "is_multiple_answer": False}], VerifyOptions(answer_field="final_answer"))
    assert out["correct"] is False


@pytest.mark.parametrize("grader", ["paper", "default"])
def test_prediction_field_keeps_the_extracted_answer(grader):
    record = {"id": 1, "problem": PAIR, "answer": "-2, 3", "completion": "\\boxed{a = -2, b = 3}"}
    (out,) = verify_records([record], VerifyOptions(grader=grader))
    assert out["prediction"] == "a = -2, b = 3" and out["correct"] is True
