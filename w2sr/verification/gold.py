"""Gold: normalise a benchmark's gold answer per source (MATH, GSM8K, AIME, AMC, OlympiadBench, GPQA, ...) into the
LaTeX string math-verify compares with, and strip a record's unit from predictions.

Pure Python, like ``extract.py`` (whose box reading the worked solutions share). Exercised by
``pytest tests/verification/test_answers.py tests/verification/test_verify_benchmarks.py`` and ``w2sr verify``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from w2sr.verification.extract import _THOUSANDS_RE, _choice_letter, _clean, _final_box_group, _last_box

__all__ = ["canonical_source", "choice_from_text", "normalize_gold", "strip_unit"]

# Aliases of the benchmark sources in /work/shared/data and the usual hub names.
_SOURCE_ALIASES = {
    "math500": "math500",
    "math-500": "math500",
    "math_500": "math500",
    "huggingfaceh4/math-500": "math500",
    "math": "math",
    "hendrycks_math": "math",
    "competition_math": "math",
    "minerva": "minerva",
    "minerva_math": "minerva",
    "minerva-math": "minerva",
    "gsm8k": "gsm8k",
    "openai/gsm8k": "gsm8k",
    "aime": "aime",
    "aime24": "aime",
    "aime25": "aime",
    "aime2024": "aime",
    "aime2025": "aime",
    "amc": "amc",
    "amc23": "amc",
    "olympiadbench": "olympiadbench",
    "olympiad_bench": "olympiadbench",
    "gpqa": "gpqa",
    "gpqa_diamond": "gpqa",
    "gpqa-diamond": "gpqa",
}


_DOLLAR_RE = re.compile(r"(?<!\\)\$")


def canonical_source(source: str | None) -> str | None:
    """Map a source name (``math500``, ``amc23``, ``olympiadbench``...) onto a family; unknown names pass through."""
    if not source:
        return None
    key = str(source).strip().lower()
    return _SOURCE_ALIASES.get(key, _SOURCE_ALIASES.get(key.rsplit("/", 1)[-1], key))


def _plain_number(text: str) -> str:
    """``1,234`` -> ``1234``; ``025`` -> ``25``; other strings unchanged."""
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if re.fullmatch(r"-?0+\d+", text):
        text = str(int(text))
    return text


def _gold_text(text: str, family: str | None, last_box_only: bool = False) -> str | None:
    text = text.strip()
    if family == "gpqa":
        return _choice_letter(text) or _choice_letter(_final_box_group(text))
    if "\\boxed" in text or "\\fbox" in text:  # a worked solution (MATH, Minerva): read like a completion
        boxed = _last_box(text) if last_box_only else _final_box_group(text)
        if boxed is None:
            return None
        text = boxed
    elif "####" in text:  # GSM8K solution
        text = text.rsplit("####", 1)[1]
    dollars = len(_DOLLAR_RE.findall(text))  # math delimiters; an escaped ``\\$`` is a currency sign
    text = _DOLLAR_RE.sub("", text).strip() if dollars >= 2 else _clean(text)
    text = _plain_number(text.strip().rstrip("."))
    return text or None


def normalize_gold(
    raw: Any, source: str | None = None, record: dict | None = None, *, last_box_only: bool = False
) -> str | None:
    """The gold answer as a LaTeX string ready for math-verify, or None when it cannot be parsed.

    * MATH / Minerva: ``raw`` may be the worked ``solution``, read by the rule that reads the completion: its final
      box group (``\\boxed{(-2,18)}$ and $\\boxed{(8,38)}`` -> ``(-2,18), (8,38)``), or with ``last_box_only`` (the
      ``paper`` grader, as Qwen2.5-Math's ``parse_ground_truth``) its last box only, so that a reference solution
      graded against its own gold is right under either grader. When ``raw`` is None the record's ``answer``,
      ``final_answer`` or ``solution`` field is used, in that order.
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
        parts = [normalize_gold(item, source, last_box_only=last_box_only) for item in raw]
        if not parts or any(part is None for part in parts):
            return None
        return ", ".join(part for part in parts if part)
    if not isinstance(raw, str):
        return None
    return _gold_text(raw, family, last_box_only)


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


_CHOICE_LINE_RE = re.compile(r"^\s*\(?([A-E])\)\s*(.*?)\s*$", re.DOTALL)
_LATEX_NOISE_RE = re.compile(
    r"\\(?:text|mathrm|textrm|mathbf|textbf|operatorname|mbox|displaystyle|left|right)(?![A-Za-z])|\\[,;:! ]|[\s${}~]"
)
_LATEX_WORDS = {"\\times": "x", "\\cdot": "x", "\u00d7": "x", "\u2212": "-", "\\%": "%", "\\approx": "~", "\\sim": "~"}


def _option_key(text: str) -> str:
    for word, plain in _LATEX_WORDS.items():
        text = text.replace(word, plain)
    return _LATEX_NOISE_RE.sub("", text).rstrip(".").lower()


def choice_from_text(answer: str | None, choices: list[str] | None) -> str | None:
    """The letter of the multiple-choice option whose text the answer repeats (``10^{-4} \\text{ eV}`` for the
    option ``D) 10^-4 eV``), compared without LaTeX markup, spaces and case; None unless exactly one option matches.
    ``choices`` are the record's ``"A) text"`` lines (``w2sr.records.benchmarks`` writes them for GPQA)."""
    if not answer or not choices:
        return None
    key = _option_key(answer)
    if not key:
        return None
    letters = []
    for line in choices:
        found = _CHOICE_LINE_RE.match(str(line))
        if found and _option_key(found.group(2)) == key:
            letters.append(found.group(1))
    return letters[0] if len(letters) == 1 else None
