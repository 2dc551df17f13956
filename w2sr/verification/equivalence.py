"""Equivalence: the rewrites applied to a (prediction, gold) pair before math-verify compares them.

Recurring ways in which right answers of strong models fail a string-level grader (Unicode math, ordinals, text
units, variable assignments, ordered vs unordered comma lists), each with hard negatives in
``tests/verification/test_equivalence.py``. Pure Python; ``grade.py`` applies ``prepare_pair`` to every pair.
Exercised by ``pytest tests/verification/test_equivalence.py``.
"""

from __future__ import annotations

import re

from w2sr.verification.extract import _THOUSANDS_RE

__all__ = ["asks_for_set", "prepare_pair", "split_top_level", "strip_ordinal", "text_unit", "unicode_to_latex"]

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u22c5": "\\cdot ", "\u00b7": "\\cdot ", "\u00f7": "\\div ",
    "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u2264": "\\le ", "\u2265": "\\ge ", "\u2260": "\\ne ",
    "\u00b0": "^\\circ", "\u00bd": "\\frac{1}{2}", "\u00bc": "\\frac{1}{4}", "\u00be": "\\frac{3}{4}",
    "\u03b8": "\\theta ", "\u03b1": "\\alpha ", "\u03b2": "\\beta ", "\u00b1": "\\pm ", "\u2032": "'",
}
_SUPERSCRIPTS = {"\u2070": "0", "\u00b9": "1", "\u00b2": "2", "\u00b3": "3", "\u2074": "4", "\u2075": "5",
                 "\u2076": "6", "\u2077": "7", "\u2078": "8", "\u2079": "9", "\u207b": "-"}
_SUPER_RE = re.compile("[" + "".join(_SUPERSCRIPTS) + "]+")
_SQRT_RE = re.compile(r"\u221a\s*(\{[^{}]*\}|\([^()]*\)|\d+(?:\.\d+)?|[A-Za-z])")
_ORDINAL_RE = re.compile(r"^(-?\d+)\s*(?:\^\s*\{?\s*(?:\\text\s*\{|\\mathrm\s*\{)?\s*(?:st|nd|rd|th)\s*\}?\s*\}?"
                         r"|(?:\\text\s*\{|\\mathrm\s*\{)\s*(?:st|nd|rd|th)\s*\}|(?:st|nd|rd|th))$")
_UNIT_RE = re.compile(r"^(-?[\d.,/{}\\a-z]*\d[\d.,/{}]*)\s*(?:\\[,;! ]|~|\s)*\\(?:text|mathrm|textrm|mbox)\s*\{"
                      r"\s*~?\s*([A-Za-z][A-Za-z ./^0-9-]*)\s*\}(\^\{?\d\}?)?$")
_ASSIGN_RE = re.compile(r"^\s*[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?\s*=\s*(.+?)\s*$", re.DOTALL)
_SET_QUESTION_RE = re.compile(r"\ball\b|\bany order\b|separated by commas|comma[- ]separated|\bevery\b",
                              re.IGNORECASE)


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
    """The question asks for a set of answers ("all values", "all solutions", "separated by commas", ...)."""
    return bool(question) and _SET_QUESTION_RE.search(question) is not None


def prepare_pair(prediction: str, gold: str, question: str | None = None,
                 unordered: bool | None = None) -> tuple[str, str, str | None]:
    """Normalise a prediction and its gold answer before math-verify: ``(prediction, gold, reason)``; a reason
    means the pair is already decided wrong here.

    * Unicode math becomes LaTeX (``x²``, ``−``, ``×``, ``√``, ``π``) on both sides.
    * A number with an ordinal (``5^{\\text{th}}``) is the number.
    * A number with a text unit (``12 \\text{ cm}``) equals the bare number (math-verify drops the unit), but when
      both sides carry a unit and the units differ (``12 cm`` vs ``12 m``) the answer is wrong.
    * Variable assignments (``a = -2, b = 3``) are their values, in order, when the gold has no ``=``.
    * A comma list is compared **in order** (both sides as a tuple, so ``(1, 2)`` = ``1, 2`` and
      ``\\boxed{7} and \\boxed{-5}`` = ``7, -5``) unless the question asks for a set (``asks_for_set``) or
      ``unordered`` is True; without a question, math-verify's own (set) reading is kept.
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
    if unordered is None:
        unordered = None if question is None else asks_for_set(question)
    if unordered is False and len(gold_parts) > 1:
        gold = "(" + ", ".join(gold_parts) + ")"
        if len(pred_parts) > 1:
            prediction = "(" + ", ".join(pred_parts) + ")"
    return prediction, gold, None
