"""Answers: pull the final answer out of a model completion, and normalise gold answers per benchmark source.

Pure Python (no torch, no sympy): ``w2sr.verification.grade`` extracts here, then compares with math-verify in a worker
process. Every function runs in time linear in the input, so a 1 MB completion or 10,000 nested braces are cheap.
Exercised by ``pytest tests/test_answers.py`` and, end to end, ``w2sr verify`` / ``pytest tests/test_verify*.py``.

Graders (``grader=``, ``w2sr verify/evaluate --options.grader``):
* ``paper`` — the paper's rule: the content of the last complete ``\\boxed{}`` only; no box = no answer;
* ``default`` — rules 1-3 below;
* ``lenient`` — rules 1-4 (``last_number_fallback=True`` turns ``default`` into ``lenient``).

Extraction rules (``mode="boxed"``, the paper's rule first):
1. the final ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched; ``\\{``/``\\}`` are literal braces; ``\\boxed 5``
   without braces takes the next token; empty and unbalanced boxes, e.g. in a truncated completion, are ignored).
   Boxes directly adjacent to the last one (separated only by ``$``, commas, ``;``, ``and``/``or``, ``\\quad``,
   spaces) form the *final box group*: ``\\boxed{2}, \\boxed{3}`` gives ``"2, 3"`` (math-verify reads it as a set);
   duplicates in the group are dropped;
2. else the last "the (final) answer is X" / "Answer: X";
3. else the last GSM8K ``#### X`` line;
4. else, only with ``last_number_fallback=True``, the last number in the text.
``mode="choice"`` returns a multiple-choice letter ``A``-``E`` (GPQA style) from a box, "answer is (B)" or
"Answer: B"; with the fallback, the last "(B)" in the text.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["extract_answer", "normalize_gold", "find_boxes", "canonical_source", "strip_unit", "MODES", "GRADERS"]

MODES = ("boxed", "choice")
GRADERS = ("paper", "default", "lenient")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GAP_RE = re.compile(r"(?:\s|\$|,|;|\.|&|\\quad|\\qquad|\\[,;: !]|\\text\{\s*(?:and|or|,)\s*\}|\band\b|\bor\b|\\\\)*")
_ANSWER_IS_RE = re.compile(
    r"(?:(?:final|correct)\s+answer|the\s+answer)\s*(?:is|:|=)\s*:?\s*|(?:^|\n)[ \t*#]*answer\s*\**\s*:\s*\**\s*",
    re.IGNORECASE)
_GSM_RE = re.compile(r"####[ \t]*([^\n]*)")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NUM_WITH_WORDS_RE = re.compile(r"(-?[\d.,/]+)\s*(?:[A-Za-z][A-Za-z .]*)")
_CHOICE_RE = re.compile(r"^\s*\(?\s*([A-E])\s*\)?(?:$|[\s.:,)])")
_CHOICE_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_PAREN_CHOICE_RE = re.compile(r"\(([A-E])\)")

# Aliases of the benchmark sources in /work/shared/data and the usual hub names.
_SOURCE_ALIASES = {
    "math500": "math500", "math-500": "math500", "math_500": "math500", "huggingfaceh4/math-500": "math500",
    "math": "math", "hendrycks_math": "math", "competition_math": "math", "minerva": "minerva",
    "minerva_math": "minerva", "minerva-math": "minerva", "gsm8k": "gsm8k", "openai/gsm8k": "gsm8k",
    "aime": "aime", "aime24": "aime", "aime25": "aime", "aime2024": "aime", "aime2025": "aime", "amc": "amc",
    "amc23": "amc", "olympiadbench": "olympiadbench", "olympiad_bench": "olympiadbench", "gpqa": "gpqa",
    "gpqa_diamond": "gpqa", "gpqa-diamond": "gpqa",
}


def canonical_source(source: str | None) -> str | None:
    """Map a source name (``math500``, ``amc23``, ``olympiadbench``...) onto a family; unknown names pass through."""
    if not source:
        return None
    key = str(source).strip().lower()
    return _SOURCE_ALIASES.get(key, _SOURCE_ALIASES.get(key.rsplit("/", 1)[-1], key))


_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)


def _match_braces(text: str) -> dict[int, int]:
    """Position of each structural ``{`` -> its matching ``}`` (one linear pass; backslash escapes the next char).

    Only backslash pairs and braces are visited (a regex scan), not every character."""
    matches: dict[int, int] = {}
    stack: list[int] = []
    for token in _BRACE_TOKEN_RE.finditer(text):
        ch = token.group()
        if ch == "{":
            stack.append(token.start())
        elif ch == "}":
            if stack:
                matches[stack.pop()] = token.start()
    return matches


def find_boxes(text: str) -> list[tuple[int, int, str]]:
    """Outermost complete ``\\boxed``/``\\fbox`` answers as ``(start, end, content)``, in order. Linear time."""
    boxes: list[tuple[int, int, str]] = []
    if "\\boxed" not in text and "\\fbox" not in text:
        return boxes
    matches: dict[int, int] | None = None
    covered = -1  # end of the last accepted box: boxes inside it are nested, not answers of their own
    n = len(text)
    for found in _BOX_RE.finditer(text):
        start, k = found.start(), found.end()
        if start < covered:
            continue
        while k < n and text[k] in " \t":
            k += 1
        if k < n and text[k] == "{":
            if matches is None:
                matches = _match_braces(text)
            end = matches.get(k)
            if end is None:  # unbalanced (truncated completion): not an answer
                continue
            boxes.append((start, end + 1, text[k + 1:end]))
            covered = end + 1
        elif k > found.end():  # "\boxed 5": the next token
            token = re.match(r"[^\s$]+", text[k:k + 200])
            if token:
                boxes.append((start, k + token.end(), token.group().rstrip(".,;")))
                covered = k + token.end()
    return boxes


def _clean(answer: str) -> str:
    answer = answer.strip()
    while len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$":
        answer = answer[1:-1].strip()
    if answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2].strip()
    if answer.startswith("\\[") and answer.endswith("\\]"):
        answer = answer[2:-2].strip()
    return answer.rstrip(" .").strip()


def _final_box_group(text: str) -> str | None:
    boxes = [b for b in find_boxes(text) if _clean(b[2])]
    if not boxes:
        return None
    group = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        gap = text[box[1]:group[0][0]]
        if len(gap) > 40 or _GAP_RE.fullmatch(gap) is None:
            break
        group.insert(0, box)
    parts: list[str] = []
    for _, _, content in group:
        part = _clean(content)
        if part not in parts:
            parts.append(part)
    return ", ".join(parts)


_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))  # "$$" before "$"


def _answer_is(text: str) -> str | None:
    last = None
    for last in _ANSWER_IS_RE.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end():last.end() + 500]
    opener = next((pair for pair in _MATH_DELIMITERS if rest.startswith(pair[0])), None)
    if opener is not None:
        start = len(opener[0])
        close = rest.find(opener[1], start)
        answer = rest[start:close] if close > 0 else rest[start:].split("\n", 1)[0]
    else:
        answer = re.split(r"\.(?:\s|$)|\n", rest, maxsplit=1)[0]
        words = _NUM_WITH_WORDS_RE.fullmatch(answer.strip())
        if words and "\\" not in answer:  # "42 apples" -> "42"
            answer = words.group(1)
    answer = _clean(answer.replace("**", ""))
    if "\\boxed" in answer or "\\fbox" in answer:  # an unbalanced (truncated) box: no answer, as in the paper
        return None
    return answer or None


def _last_number(text: str) -> str | None:
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    if last is None:
        return None
    number = last.group().rstrip(",")
    return number.replace(",", "") if _THOUSANDS_RE.fullmatch(number) else number.split(",")[-1]


def _choice_letter(candidate: str | None) -> str | None:
    if not candidate:
        return None
    for _ in range(3):  # \text{\textbf{(B)}} and friends
        candidate = _CHOICE_TEXT_RE.sub(r"\1", candidate)
    found = _CHOICE_RE.match(candidate.replace("$", " ").replace("*", " "))
    return found.group(1) if found else None


def _last_box(text: str) -> str | None:
    for _, _, content in reversed(find_boxes(text)):
        answer = _clean(content)
        if answer:
            return answer
    return None


def extract_answer(completion: str, *, mode: str = "boxed", last_number_fallback: bool = False,
                   grader: str = "default") -> str | None:
    """The final answer in ``completion`` (see the module docstring for the rules), or None when there is none."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a string, got {type(completion).__name__}")
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; expected one of {GRADERS}")
    if grader == "paper":
        if last_number_fallback:
            raise ValueError("the paper grader has no last-number fallback (use grader='lenient')")
        box = _last_box(completion)
        return _choice_letter(box) if mode == "choice" else box
    last_number_fallback = last_number_fallback or grader == "lenient"
    if mode == "choice":
        for candidate in (_final_box_group(completion), _answer_is(completion)):
            letter = _choice_letter(candidate)
            if letter:
                return letter
        if last_number_fallback:
            letters = _PAREN_CHOICE_RE.findall(completion[-2000:])
            return letters[-1] if letters else None
        return None
    if mode != "boxed":
        raise ValueError(f"unknown extraction mode {mode!r}; expected one of {MODES}")
    answer = _final_box_group(completion) or _answer_is(completion)
    if answer is None:
        gsm = None
        for gsm in _GSM_RE.finditer(completion):
            pass
        if gsm is not None:
            answer = _clean(gsm.group(1)) or None
    if answer is None and last_number_fallback:
        answer = _last_number(completion)
    return answer


def _plain_number(text: str) -> str:
    """``1,234`` -> ``1234``; ``025`` -> ``25``; other strings unchanged."""
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if re.fullmatch(r"-?0+\d+", text):
        text = str(int(text))
    return text


def _gold_text(text: str, family: str | None) -> str | None:
    text = text.strip()
    if family == "gpqa":
        return _choice_letter(text) or _choice_letter(_final_box_group(text))
    if "\\boxed" in text or "\\fbox" in text:  # a worked solution (MATH, Minerva): its final box group
        boxed = _final_box_group(text)
        if boxed is None:
            return None
        text = boxed
    elif "####" in text:  # GSM8K solution
        text = text.rsplit("####", 1)[1]
    text = text.replace("$", "").strip() if text.count("$") >= 2 else _clean(text)
    text = _plain_number(text.strip().rstrip("."))
    return text or None


def normalize_gold(raw: Any, source: str | None = None, record: dict | None = None) -> str | None:
    """The gold answer as a LaTeX string ready for math-verify, or None when it cannot be parsed.

    * MATH / Minerva: ``raw`` may be the worked ``solution`` (last box group); when ``raw`` is None the record's
      ``answer``, ``final_answer`` or ``solution`` field is used, in that order.
    * MATH-500: the ``answer`` string as is (surrounding ``$`` dropped).
    * GSM8K: ``"... #### 1,234"`` or ``"1,234"`` -> ``"1234"``.
    * AIME: ints or strings with leading zeros (``"025"``) -> ``"25"``. AMC: floats, ``27.0`` -> ``"27"``.
    * OlympiadBench: ``final_answer`` list of ``"$...$"`` strings (several answers, possibly several ``$..$``
      in one element) -> joined with ``", "`` (math-verify reads a comma list as a set). Units are not part of
      the gold; ``strip_unit`` removes the record's ``unit`` from predictions.
    * GPQA: a letter ``A``-``E``.
    Booleans, NaN/inf, empty strings/lists and solutions whose box is unbalanced give None.
    """
    family = canonical_source(source)
    if raw is None and record:
        for key in ("answer", "final_answer", "solution"):
            if record.get(key) not in (None, "", []):
                raw = record[key]
                break
    if raw is None or isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            return None
        return str(int(raw)) if raw.is_integer() else repr(raw)
    if isinstance(raw, (list, tuple)):
        parts = [normalize_gold(item, source) for item in raw]
        if not parts or any(part is None for part in parts):
            return None
        return ", ".join(part for part in parts if part)
    if not isinstance(raw, str):
        return None
    return _gold_text(raw, family)


def strip_unit(prediction: str, unit: str | None) -> str:
    """Drop a trailing unit (OlympiadBench's ``unit`` field, e.g. ``km/h``, ``^{\\circ}``) from a prediction."""
    if not unit:
        return prediction
    bare = unit.replace("$", "").strip()
    if not bare:
        return prediction
    for form in (f"\\text{{ {bare}}}", f"\\text{{{bare}}}", f"\\mathrm{{~{bare}}}", f"\\mathrm{{{bare}}}", bare):
        stripped = prediction.rstrip()
        if stripped.endswith(form) and len(stripped) > len(form):
            return stripped[: -len(form)].rstrip(" ~\\,")
    return prediction


# ------------------------------------------------------------------------------------- equivalence on real outputs
# Recurring ways in which right answers of strong models fail a string-level grader, fixed before math-verify
# compares them (``prepare_pair``); each has hard negatives in tests/test_equivalence.py.
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
