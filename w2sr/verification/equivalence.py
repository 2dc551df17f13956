"""Equivalence: the rewrites applied to a (prediction, gold) pair before math-verify compares them.

Recurring ways in which right answers of strong models fail a string-level grader (Unicode math, ordinals, text
units, variable assignments, ordered vs unordered comma lists), each with hard negatives in
``tests/verification/test_equivalence.py`` (lists: real MATH-500 cases in ``tests/verification/test_sets.py``).
Pure Python; ``grade.py`` applies ``prepare_pair`` to every pair.
Exercised by ``pytest tests/verification/test_equivalence.py tests/verification/test_sets.py``.
"""

from __future__ import annotations

import re

from w2sr.verification.extract import _THOUSANDS_RE

__all__ = [
    "asks_for_order",
    "asks_for_set",
    "list_is_ordered",
    "prepare_pair",
    "split_top_level",
    "strip_ordinal",
    "text_unit",
    "unicode_to_latex",
]

_UNICODE = {
    "\u2212": "-",
    "\u2013": "-",
    "\u00d7": "\\times ",
    "\u22c5": "\\cdot ",
    "\u00b7": "\\cdot ",
    "\u00f7": "\\div ",
    "\u03c0": "\\pi ",
    "\u221e": "\\infty ",
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u2260": "\\ne ",
    "\u00b0": "^\\circ",
    "\u00bd": "\\frac{1}{2}",
    "\u00bc": "\\frac{1}{4}",
    "\u00be": "\\frac{3}{4}",
    "\u03b8": "\\theta ",
    "\u03b1": "\\alpha ",
    "\u03b2": "\\beta ",
    "\u00b1": "\\pm ",
    "\u2032": "'",
}
_SUPERSCRIPTS = {
    "\u2070": "0",
    "\u00b9": "1",
    "\u00b2": "2",
    "\u00b3": "3",
    "\u2074": "4",
    "\u2075": "5",
    "\u2076": "6",
    "\u2077": "7",
    "\u2078": "8",
    "\u2079": "9",
    "\u207b": "-",
}
_SUPER_RE = re.compile("[" + "".join(_SUPERSCRIPTS) + "]+")
_SQRT_RE = re.compile(r"\u221a\s*(\{[^{}]*\}|\([^()]*\)|\d+(?:\.\d+)?|[A-Za-z])")
_ORDINAL_RE = re.compile(
    r"^(-?\d+)\s*(?:\^\s*\{?\s*(?:\\text\s*\{|\\mathrm\s*\{)?\s*(?:st|nd|rd|th)\s*\}?\s*\}?"
    r"|(?:\\text\s*\{|\\mathrm\s*\{)\s*(?:st|nd|rd|th)\s*\}|(?:st|nd|rd|th))$"
)
_UNIT_RE = re.compile(
    r"^(-?[\d.,/{}\\a-z]*\d[\d.,/{}]*)\s*(?:\\[,;! ]|~|\s)*\\(?:text|mathrm|textrm|mbox)\s*\{"
    r"\s*~?\s*([A-Za-z][A-Za-z ./^0-9-]*)\s*\}(\^\{?\d\}?)?$"
)
_ASSIGN_RE = re.compile(r"^\s*[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?\s*=\s*(.+?)\s*$", re.DOTALL)
_SET_QUESTION_RE = re.compile(
    r"\ball\b|\b(?:any|either) order\b|separated by commas|comma[- ]separated|\bevery\b|\bunordered\b"
    # "Find the roots of ...", "compute the two roots", "Enter all the integer roots", "Find the real solutions"
    # (not "the sum of the roots": the words between the verb and the noun never include "of")
    r"|\b(?:find|compute|determine|enter|list|give|what\s+are)\s+(?:(?!of\b)[a-z-]+\s+){0,4}?"
    r"(?:roots|solutions|zeros|zeroes)\b",
    re.IGNORECASE,
)
# the list itself is a sequence: "in increasing order", "from least to greatest", "an ordered list" (not "in that
# order", which in real MATH problems is about the problem's objects: "form an arithmetic sequence, in that order")
_SEQUENCE_QUESTION_RE = re.compile(
    r"\b(?:increasing|decreasing|ascending|descending|numerical|alphabetical|chronological)\s+order\b"
    r"|\bin\s+order\s+from\b"
    r"|\bfrom\s+(?:the\s+)?(?:least|smallest|lowest|largest|greatest|highest)\s+to\s+(?:the\s+)?"
    r"(?:least|smallest|lowest|largest|greatest|highest)\b|\bordered\s+(?:list|sequence)s?\b",
    re.IGNORECASE,
)
# a sentence that tells how to write the answer: an imperative verb opening a clause ("Express them", "..., order
# them", "and list them"), a question ("What are ..."), or "your answer(s)"; "the list ... written in increasing
# order" describes the problem instead
_ANSWER_INSTRUCTION_RE = re.compile(
    r"(?:^|[.;:?!,(]\$?\s*|\b(?:and|then|please)\s+)\s*(?:express|list|enter|order|write|give|put|sort|arrange|separate"
    r"|type|answer|report|provide|state|rank)\b|\bwhat\s+are\b|\byour\s+answers?\b",
    re.IGNORECASE,
)
# the answer is one ordered object: "Enter the ordered pair $(a,b)$", "the ordered triple"
_TUPLE_QUESTION_RE = re.compile(r"\bordered\s+(?:pair|triple|quadruple|quintuple|tuple|n-tuple)s?\b", re.IGNORECASE)
_PM_RE = re.compile(r"\\(?:pm|mp)(?![A-Za-z])|\u00b1")
_OPEN_RE = re.compile(r"^(?:\\left\s*)?[(\[]")


def unicode_to_latex(text: str) -> str:
    """``x²`` -> ``x^{2}``, ``−`` -> ``-``, ``×`` -> ``\\times``, ``√2`` -> ``\\sqrt{2}``, ``π`` -> ``\\pi``."""
    if text.isascii():
        return text
    text = _SQRT_RE.sub(lambda m: "\\sqrt{" + m.group(1).strip("{}()") + "}", text)
    text = _SUPER_RE.sub(lambda m: "^{" + "".join(_SUPERSCRIPTS[c] for c in m.group()) + "}", text)
    for char, latex in _UNICODE.items():
        text = text.replace(char, latex)
    return text.strip()


def strip_ordinal(text: str) -> str:
    """``5^{\\text{th}}``, ``5th``, ``2^{nd}`` -> the number."""
    found = _ORDINAL_RE.match(text.strip())
    return found.group(1) if found else text


def text_unit(text: str) -> tuple[str, str] | None:
    """``12 \\text{ cm}`` -> ``("12", "cm")``; None when the answer is not a number followed by a text unit."""
    found = _UNIT_RE.match(text.strip())
    if not found:
        return None
    unit = re.sub(r"\s+", "", found.group(2)).rstrip(".") + (found.group(3) or "").replace("{", "").replace("}", "")
    return found.group(1), unit.lower()


def split_top_level(text: str) -> list[str]:
    """Split on commas outside (), [], {} (a comma list); ``\\{`` and ``\\}`` count as braces."""
    parts, depth, start = [], 0, 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            depth += 1 if text[i + 1] == "{" else -1
            i += 2
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    parts.append(text[start:].strip())
    return parts


def _is_thousands(text: str) -> bool:
    return bool(_THOUSANDS_RE.fullmatch(text.replace("{,}", ",").replace("\\!", "")))


def asks_for_set(question: str | None) -> bool:
    """The question asks for a set of answers ("all values", "all solutions", "separated by commas", "Find the roots
    of ...", "in any order", ...)."""
    return bool(question) and _SET_QUESTION_RE.search(question) is not None


def asks_for_order(question: str | None) -> bool:
    """The question asks for an ordered answer: a sequence ("in increasing order", "from least to greatest") or one
    ordered object ("the ordered pair $(a,b)$", "ordered triple")."""
    return bool(question) and (_asks_for_sequence(question) or _TUPLE_QUESTION_RE.search(question) is not None)


def _sentence(question: str, start: int, end: int) -> str:
    """The sentence around ``question[start:end]`` (ends at ``.``/``?``/``!`` + space, also after a closing ``$``,
    or at a newline)."""
    ends = (". ", "? ", "! ", ".$ ", "?$ ")
    found = [(question.rfind(p, 0, start), len(p) - 2) for p in ends]
    before = max([question.rfind("\n", 0, start)] + [i + shift for i, shift in found if i >= 0])
    after = [i for i in (question.find("\n", end), *(question.find(p, end) for p in ends)) if i >= 0]
    return question[before + 1 : min(after, default=len(question))]


def _asks_for_sequence(question: str) -> bool:
    """A sequence cue that is about the answer: in a sentence that tells how to write it ("Express them in
    decreasing order", "list them from least to greatest", "What are the four integers in increasing order?"), and
    not negated ("not necessarily in increasing order"). A cue that describes the problem's own objects ("the list
    ... consists of three consecutive integers written in increasing order. Determine all possible values of $m$",
    OlympiadBench 2282) is not about the answer."""
    return any(
        not re.search(r"\bnot\s+(?:necessarily\s+)?(?:in\s+)?$", question[: found.start()], re.IGNORECASE)
        and _ANSWER_INSTRUCTION_RE.search(_sentence(question, found.start(), found.end())) is not None
        for found in _SEQUENCE_QUESTION_RE.finditer(question)
    )


def _ordered_object(text: str) -> bool:
    """``text`` is one bracketed object with top-level commas inside: a tuple ``(a, b)``, ``\\left( a, b \\right)``
    or an interval ``[a, b)``; not ``(a+5)(b+2)`` or a union of intervals."""
    text = text.strip()
    start = _OPEN_RE.match(text)
    if not start or not re.search(r"(?:\\right\s*)?[)\]]$", text):
        return False
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0 and i < len(text) - 1:
                return False  # the first bracket closes before the end
    body = re.sub(r"(?:\\right\s*)?[)\]]$", "", text[start.end() :])
    return len(split_top_level(body)) > 1


def list_is_ordered(question: str | None, gold_parts: list[str]) -> bool | None:
    """How a comma list (``gold_parts``, at least two) is compared: True in order, False as a set, None (no
    question) as math-verify reads it.

    The order of the rules: a question asking for the answer as a sequence ("Express them in increasing order") ->
    in order, even with "all" (a sequence that describes the problem's own objects, "the list ... written in
    increasing order", is no such cue);
    asking for one ordered pair / triple when the parts are plain values -> in order ("all ordered pairs" with
    parts that are tuples is a set of tuples, each compared in order by math-verify); asking for a set (roots,
    solutions, "all", "separated by commas", "any order") -> as a set; otherwise (e.g. "Find $a$ and $b$") in order.
    """
    if question is None:
        return None
    if _asks_for_sequence(question):
        return True
    if _TUPLE_QUESTION_RE.search(question) and not all(_ordered_object(part) for part in gold_parts):
        return True
    return not asks_for_set(question)


def _set_items(parts: list[str]) -> list[str] | None:
    """The items of a bare comma list or of one ``\\{...\\}`` set literal; None for one value that is something
    else (a tuple, an interval: math-verify decides those)."""
    if len(parts) == 1:
        inner = re.fullmatch(r"\s*(?:\\left\s*)?\\\{(.*?)(?:\\right\s*)?\\\}\s*", parts[0], re.DOTALL)
        if inner:
            return split_top_level(inner.group(1))
        if _ordered_object(parts[0]):
            return None
    return parts


def _number(text: str) -> float | None:
    try:
        return float(text.replace("{", "").replace("}", "").strip())
    except ValueError:
        return None


def _count_values(items: list[str]) -> int:
    """How many values a list's items stand for: ``\\pm 1`` is two."""
    return sum(2 ** len(_PM_RE.findall(item)) for item in items)


def _multiset_mismatch(pred_parts: list[str], gold_parts: list[str]) -> str | None:
    """A list compared as a set is a multiset: ``-2`` is not ``-2, -2`` and ``16, 3, 1`` is not ``16, 3, 1, 1``
    (math-verify's sets would accept both). The reason it is wrong, or None (math-verify then compares the values)."""
    pred_items, gold_items = _set_items(pred_parts), _set_items(gold_parts)
    if pred_items is None or gold_items is None:
        return None
    pred_count, gold_count = _count_values(pred_items), _count_values(gold_items)
    if pred_count != gold_count:
        return f"{pred_count} values for a list of {gold_count} (repeated values count)"
    pred_numbers, gold_numbers = [_number(p) for p in pred_items], [_number(g) for g in gold_items]
    if None not in pred_numbers and None not in gold_numbers and sorted(pred_numbers) != sorted(gold_numbers):
        return "the values differ (compared as a multiset)"
    return None


def prepare_pair(
    prediction: str, gold: str, question: str | None = None, unordered: bool | None = None
) -> tuple[str, str, str | None]:
    """Normalise a prediction and its gold answer before math-verify: ``(prediction, gold, reason)``; a reason
    means the pair is already decided wrong here.

    * Unicode math becomes LaTeX (``x²``, ``−``, ``×``, ``√``, ``π``) on both sides.
    * A number with an ordinal (``5^{\\text{th}}``) is the number.
    * A number with a text unit (``12 \\text{ cm}``) equals the bare number (math-verify drops the unit), but when
      both sides carry a unit and the units differ (``12 cm`` vs ``12 m``) the answer is wrong.
    * Variable assignments (``a = -2, b = 3``) are their values, in order, when the gold has no ``=``.
    * A comma list is compared **in order** (both sides as a tuple, so ``(1, 2)`` = ``1, 2`` and
      ``\\boxed{7} and \\boxed{-5}`` = ``7, -5``) or **as a set** (math-verify's set semantics: ``3, 5, 7`` =
      ``7, 3, 5``) as ``list_is_ordered`` decides from the question: roots, solutions and "all ..." are sets unless
      the question asks for an order ("in increasing order") or one ordered pair; ``unordered=True`` forces a set.
      Without a question, math-verify's own (set) reading is kept. A set is a **multiset**: it needs as many values
      as the gold lists (``-2`` != ``-2, -2``; ``16, 3, 1`` != ``16, 3, 1, 1``). A gold that is one tuple or interval
      (``(-2, 1)``, ``(3, 4]``) is always compared in order (math-verify does so for tuples and intervals).
    * Percentages are left to math-verify: ``50\\%`` = ``50`` = ``0.5``, but ``50\\%`` != ``5``.
    """
    prediction, gold = unicode_to_latex(prediction), unicode_to_latex(gold)
    prediction, gold = strip_ordinal(prediction), strip_ordinal(gold)
    unit_p, unit_g = text_unit(prediction), text_unit(gold)
    if unit_p and unit_g and unit_p[1] != unit_g[1]:
        return prediction, gold, f"unit {unit_p[1]!r} differs from the gold's {unit_g[1]!r}"
    gold_parts = split_top_level(gold) if not _is_thousands(gold) else [gold]
    pred_parts = split_top_level(prediction) if not _is_thousands(prediction) else [prediction]
    if "=" not in gold and len(pred_parts) > 1:
        values = [_ASSIGN_RE.match(part) for part in pred_parts]
        if all(values):
            pred_parts = [v.group(1) for v in values]
            prediction = ", ".join(pred_parts)
    if len(gold_parts) == 1 and len(pred_parts) > 1 and len(set(pred_parts)) == 1:
        prediction, pred_parts = pred_parts[0], pred_parts[:1]  # "\boxed{5}. \boxed{5}": one answer said twice
    if unordered is None and len(gold_parts) > 1:
        ordered = list_is_ordered(question, gold_parts)
        unordered = None if ordered is None else not ordered
    if unordered is not False and len(gold_parts) > 1:
        wrong = _multiset_mismatch(pred_parts, gold_parts)
        if wrong:
            return prediction, gold, wrong
    if unordered is False and len(gold_parts) > 1:
        gold = "(" + ", ".join(gold_parts) + ")"
        if len(pred_parts) > 1:
            prediction = "(" + ", ".join(pred_parts) + ")"
    return prediction, gold, None
