"""Extract: pull the final answer out of a model completion (the gold side is ``gold.py``).

Pure Python (no torch, no sympy): ``w2sr.verification.grade`` extracts here, then compares with math-verify in a worker
process. Every function runs in time linear in the input, so a 1 MB completion or 10,000 nested braces are cheap.
Exercised by ``pytest tests/verification/test_answers.py`` and, end to end, ``w2sr verify`` /
``pytest tests/verification/test_verify*.py``.

Graders (``grader=``, ``w2sr verify/evaluate --options.grader``):
* ``paper`` — the paper's rule: the content of the last complete ``\\boxed{}`` only; no box = no answer;
* ``default`` — rules 1-3 below;
* ``lenient`` — rules 1-4 (``last_number_fallback=True`` turns ``default`` into ``lenient``).

Extraction rules (``mode="boxed"``, the paper's rule first):
1. the final ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched; ``\\{``/``\\}`` are literal braces; ``\\boxed 5``
   without braces takes the next token; empty and unbalanced boxes, e.g. in a truncated completion, are ignored).
   Boxes directly adjacent to the last one (separated only by ``$``, commas, ``;``, ``and``/``or``, ``\\quad``,
   spaces, a variable's label ``b =``) form the *final box group*: ``\\boxed{2}, \\boxed{3}`` gives ``"2, 3"``;
   repeated values are kept (``$a = \\boxed{-2}$ and $b = \\boxed{-2}$`` gives ``"-2, -2"``: a list is a multiset,
   see ``equivalence.prepare_pair``);
2. else the last "the (final) answer is X" / "Answer: X";
3. else the last GSM8K ``#### X`` line;
4. else, only with ``last_number_fallback=True``, the last number in the text.
``mode="choice"`` returns a multiple-choice letter ``A``-``E`` (GPQA style) from a box, "answer is (B)" or
"Answer: B"; with the fallback, the last "(B)" in the text.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

__all__ = ["extract_answer", "find_boxes", "Mode", "Grader", "MODES", "GRADERS"]

Mode = Literal["boxed", "choice"]
Grader = Literal["paper", "default", "lenient"]
MODES: tuple[str, ...] = get_args(Mode)
GRADERS: tuple[str, ...] = get_args(Grader)

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GAP_RE = re.compile(
    r"(?:\s|\$|,|;|\.|&|\\quad|\\qquad|\\[,;: !]|\\text\{\s*(?:and|or|,)\s*\}|\band\b|\bor\b|\\\\"
    r"|\b[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?\s*=)*"  # "$a = \boxed{-2}$ and $b = \boxed{-2}$": the next box's label
)
_ANSWER_IS_RE = re.compile(
    r"(?:(?:final|correct)\s+answer|the\s+answer)\s*(?:is|:|=)\s*:?\s*|(?:^|\n)[ \t*#]*answer\s*\**\s*:\s*\**\s*",
    re.IGNORECASE,
)
_GSM_RE = re.compile(r"####[ \t]*([^\n]*)")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NUM_WITH_WORDS_RE = re.compile(r"(-?[\d.,/]+)\s*(?:[A-Za-z][A-Za-z .]*)")
_CHOICE_RE = re.compile(r"^\s*\(?\s*([A-E])\s*\)?(?:$|[\s.:,)])")
_CHOICE_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_PAREN_CHOICE_RE = re.compile(r"\(([A-E])\)")

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
            boxes.append((start, end + 1, text[k + 1 : end]))
            covered = end + 1
        elif k > found.end():  # "\boxed 5": the next token
            token = re.match(r"[^\s$]+", text[k : k + 200])
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
        gap = text[box[1] : group[0][0]]
        if len(gap) > 40 or _GAP_RE.fullmatch(gap) is None:
            break
        group.insert(0, box)
    return ", ".join(_clean(content) for _, _, content in group)


_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))  # "$$" before "$"


def _answer_is(text: str) -> str | None:
    last = None
    for last in _ANSWER_IS_RE.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end() : last.end() + 500]
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


def extract_answer(
    completion: str, *, mode: str = "boxed", last_number_fallback: bool = False, grader: str = "default"
) -> str | None:
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
