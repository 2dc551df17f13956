"""GPQA-Diamond through the registry and the grader: the prompt asks for the option's letter, and an answer that
repeats an option's text counts as that option's letter (issue 26 item 8: a correct ``\\boxed{10^{-4} \\text{ eV}}``
for option D was ``no_answer``).

The record is written in the GPQA file's own schema (``Question``, ``Correct Answer``, ``Incorrect Answer 1-3``,
``Record ID``; the gated set is not in ../shared/data) and read by ``load_benchmark`` as ``w2sr evaluate
--benchmarks gpqa_diamond --benchmark_dir DIR`` reads it. Run: ``pytest tests/verification/test_multiple_choice.py``.
"""

from __future__ import annotations

import json

import pytest

from w2sr.records.benchmarks import CHOICE_INSTRUCTION, load_benchmark
from w2sr.verification.gold import choice_from_text
from w2sr.verification.grade import VerifyOptions, verify_records

RECORD = {
    "Record ID": "recLifetime",
    "Question": "Two quantum states with energies E1 and E2 have a lifetime of 10^-9 sec and 10^-8 sec, "
    "respectively. We want to clearly distinguish these two energy levels. Which one of the following options could "
    "be their energy difference so that they can be clearly resolved?",
    "Correct Answer": "10^-4 eV",
    "Incorrect Answer 1": "10^-11 eV",
    "Incorrect Answer 2": "10^-8 eV",
    "Incorrect Answer 3": "10^-9 eV",
}


@pytest.fixture
def problem(tmp_path):
    (tmp_path / "gpqa_diamond").mkdir()
    (tmp_path / "gpqa_diamond" / "test.jsonl").write_text(json.dumps(RECORD) + "\n", encoding="utf-8")
    (loaded,) = load_benchmark("gpqa_diamond", tmp_path, seed=5)  # seed 5: A) 10^-9, B) 10^-8, C) 10^-11, D) 10^-4 eV
    return loaded


def test_the_prompt_lists_the_options_then_asks_for_the_letter(problem) -> None:
    assert problem.answer == "D" and "D) 10^-4 eV" in problem.problem
    assert problem.problem.endswith("D) 10^-4 eV\n\n" + CHOICE_INSTRUCTION)
    assert "letter" in CHOICE_INSTRUCTION


@pytest.mark.parametrize("grader", ["paper", "default"])
def test_an_answer_that_repeats_an_options_text_is_graded_as_its_letter(problem, grader: str) -> None:
    cases = [
        ("the energy difference must exceed both widths, so $\\boxed{10^{-4} \\text{ eV}}$.", "D", True),
        ("so $\\boxed{10^{-4}\\,\\mathrm{eV}}$", "D", True),
        ("so $\\boxed{D}$", "D", True),
        ("so $\\boxed{\\text{(D) } 10^{-4} \\text{ eV}}$", "D", True),
        ("so $\\boxed{10^{-8} \\text{ eV}}$", "B", False),  # another option's text: that option, wrong
        ("so $\\boxed{10^{-5} \\text{ eV}}$", None, False),  # no option's text: no answer
        ("the lifetimes give widths near 10^-7 eV", None, False),
    ]
    records = [{**problem.to_dict(), "completion": completion} for completion, _, _ in cases]
    out = verify_records(records, VerifyOptions(grader=grader))
    assert [(o["prediction"], o["correct"]) for o in out] == [(letter, ok) for _, letter, ok in cases]
    assert [o["verify_status"] for o in out][-2:] == ["no_answer", "no_answer"]


def test_choice_from_text_needs_exactly_one_matching_option() -> None:
    choices = ["A) 10^-9 eV", "B) 10^-8 eV", "C) 10^-11 eV", "D) 10^-4 eV"]
    assert choice_from_text("10^{-4} \\text{ eV}", choices) == "D"
    assert choice_from_text("10^{-4} \\text{ EV}.", choices) == "D"
    assert choice_from_text("10^{-4}", choices) is None  # the unit is part of the option
    assert choice_from_text("x", ["A) x", "B) y", "C) x", "D) z"]) is None  # ambiguous
    assert choice_from_text("10^{-4} eV", None) is None
