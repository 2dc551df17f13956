"""Builds tests/data/verify_corpus.jsonl: verification cases {gold, source, completion, expected, note, origin}.

485 cases: 205 hand-written (``origin: hand``, each verdict checked by hand: 135 short cases per answer type and model
habit in ``HAND``, 70 in real model output styles in ``MODEL_STYLES``: long solutions with several boxes, units,
text answers, multiple choice, unparseable gold that must give null) and 280 templated (``origin: templated``): real
gold answers from ../shared/data (read-only) put through 14 templates whose verdict is known by construction (same
value in another form -> true; off by one, sign flipped, reciprocal, times ten -> false). Exact duplicates
(same gold, source and completion) are dropped (90 of the templated draws repeat a gold answer). Deterministic.
Run: ``python tests/data/verify_corpus_build.py`` (rewrites the corpus; tests only read it; the counts above are
checked by ``tests/verification/test_promises_corpus.py``).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data"
COT = (
    "Let me work through this step by step.\nFirst, I set up the relevant quantities and simplify the expression. "
    "After substituting and checking the arithmetic carefully, we get the result below.\n"
)


def box(answer: str, lead: str = "Therefore, the final answer is ") -> str:
    return f"{COT}{lead}$\\boxed{{{answer}}}$."


# (gold, source, completion, expected, note)
HAND: list[tuple] = [
    # fractions / decimals / percents
    ("\\frac{1}{2}", "math500", box("0.5"), True, "fraction vs decimal"),
    ("\\frac{1}{2}", "math500", box("\\dfrac{1}{2}"), True, "dfrac"),
    ("\\frac{1}{2}", "math500", box("\\tfrac12"), True, "tfrac without braces"),
    ("\\frac{1}{2}", "math500", box("1/2"), True, "slash fraction"),
    ("\\frac{1}{2}", "math500", box("\\frac{2}{4}"), True, "unreduced fraction"),
    ("\\frac{1}{2}", "math500", box("\\frac{2}{1}"), False, "reciprocal"),
    ("\\frac{1}{2}", "math500", box("-\\frac{1}{2}"), False, "sign"),
    ("\\frac{3}{56}", "math500", box("\\frac{3}{65}"), False, "swapped digits"),
    ("\\frac{14}{3}", "math500", box("4.67"), False, "rounded decimal of a fraction is not exact"),
    ("0.15", "math500", box("\\frac{3}{20}"), True, "decimal vs fraction"),
    ("0.15", "math500", box("0.16"), False, "decimal off"),
    ("1.25", "math500", box("\\frac{5}{4}"), True, "decimal gold, fraction prediction"),
    ("1.25", "math500", box("1.2"), False, "rounding"),
    ("4.25", "olympiadbench", box("4.3"), False, "rounding to one place"),
    ("50\\%", "math500", box("50\\%"), True, "percent"),
    ("50\\%", "math500", box("50"), True, "percent sign dropped"),
    ("40", "math", box("40\\%"), True, "percent sign added to gold number"),
    ("10\\%", "math", box("20\\%"), False, "wrong percent"),
    # integers, thousands separators, leading zeros
    ("1,234", "gsm8k", f"{COT}So the total is 1234 dollars.\n#### 1234", True, "gsm8k comma gold"),
    ("#### 1,234", "gsm8k", f"{COT}#### 1,234", True, "gsm8k raw answer with commas both sides"),
    ("1234", "gsm8k", box("1{,}234"), True, "latex thousands separator"),
    ("1234", "gsm8k", box("1,\\!234"), True, "latex thin-space thousands"),
    ("1234", "gsm8k", box("1243"), False, "transposed digits"),
    ("10000", "math", box("10{,}000"), True, "10{,}000 (the Qwen grader's known miss)"),
    ("025", "aime24", box("25"), True, "AIME leading zero"),
    ("025", "aime24", box("025"), True, "AIME leading zero both"),
    ("025", "aime24", box("250"), False, "AIME digit shift"),
    (27.0, "amc23", box("27"), True, "AMC float gold"),
    (27.0, "amc23", box("27.0"), True, "AMC float both"),
    (27.0, "amc23", box("28"), False, "AMC off by one"),
    (-1.0, "amc23", box("-1"), True, "AMC negative"),
    (-1.0, "amc23", box("1"), False, "AMC sign"),
    (70, "aime25", box("70"), True, "AIME int gold"),
    (70, "aime25", box("7"), False, "AIME dropped digit"),
    # units, text, degrees
    ("10\\text{ cm}", "math500", box("10"), True, "unit in gold"),
    ("10", "math500", box("10\\text{ cm}"), True, "unit in prediction"),
    ("10", "math500", box("10 \\mathrm{~cm}"), True, "mathrm unit"),
    ("10", "math500", box("10\\text{ cm}^2"), True, "squared unit"),
    ("12", "math500", box("10\\text{ cm}"), False, "unit but wrong value"),
    ("90^\\circ", "math500", box("90"), True, "degrees dropped"),
    ("90^\\circ", "math500", box("90^{\\circ}"), True, "degrees braced"),
    ("90", "math500", box("90^\\circ"), True, "degrees added"),
    ("90^\\circ", "math500", box("45^\\circ"), False, "wrong angle"),
    ("\\text{Evelyn}", "math500", box("\\text{Evelyn}"), True, "text answer"),
    ("\\text{Evelyn}", "math500", box("\\text{Bob}"), False, "wrong name"),
    ("\\text{(C)}", "math500", box("\\text{(C)}"), True, "lettered option"),
    ("\\text{(C)}", "math500", box("\\text{(D)}"), False, "wrong lettered option"),
    ("\\$18.90", "math", box("\\$18.90"), True, "dollar amount"),
    ("\\$18.90", "math", box("18.90"), True, "dollar sign dropped"),
    ("\\$18.90", "math", box("18.09"), False, "wrong dollar amount"),
    # intervals, tuples, sets
    ("(1,2]", "math500", box("(1,2]"), True, "half-open interval"),
    ("(1,2]", "math500", box("[1,2]"), False, "closed vs half-open"),
    ("(-\\infty, 3)", "math500", box("(-\\infty,3)"), True, "infinite interval"),
    ("(-\\infty, 3)", "math500", box("(-\\infty,3]"), False, "endpoint included"),
    ("[2,5) \\cup (5,\\infty)", "math", box("[2,5)\\cup(5,\\infty)"), True, "union of intervals"),
    ("[2,5) \\cup (5,\\infty)", "math", box("[2,\\infty)"), False, "missing hole"),
    ("x>2", "olympiadbench", box("(2,\\infty)"), True, "inequality vs interval"),
    ("(6,31,-1)", "math500", box("(6,31,-1)"), True, "triple"),
    ("(6,31,-1)", "math500", box("(31,6,-1)"), False, "tuple order matters"),
    ("(6,31,-1)", "math500", box("(6,31,1)"), False, "tuple sign"),
    (
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        "math500",
        box("(3, \\frac{\\pi}{2})"),
        True,
        "polar point with left/right",
    ),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "math500", box("(3, \\pi)"), False, "polar angle wrong"),
    ("(-2,1)", "math500", box("(1,-2)"), False, "point coordinates swapped"),
    ("3, 5, 7", "math500", box("3, 5, 7"), True, "list of answers"),
    ("3, 5, 7", "math500", box("7, 5, 3"), True, "list in another order"),
    ("3, 5, 7", "math500", box("3, 5"), False, "missing element"),
    ("3, 5, 7", "math500", f"{COT}So $x=\\boxed{{3}}, \\boxed{{5}}, \\boxed{{7}}$.", True, "several boxes joined"),
    ("1,-2", "math500", box("-2, 1"), True, "two roots reordered"),
    ("1,-2", "math500", box("1, 2"), False, "root sign"),
    ("\\{1,2\\}", "math", box("\\{2,1\\}"), True, "set order"),
    ("\\{1,2\\}", "math", box("\\{1,3\\}"), False, "set element"),
    # matrices / vectors
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "math", box("\\begin{pmatrix}1\\\\2\\end{pmatrix}"), True, "vector"),
    (
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        "math",
        box("\\begin{pmatrix}2\\\\1\\end{pmatrix}"),
        False,
        "vector order",
    ),
    (
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        "math",
        box("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"),
        True,
        "matrix",
    ),
    (
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        "math",
        box("\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}"),
        False,
        "transposed matrix",
    ),
    (
        "\\begin{pmatrix} 1/2 \\\\ 0 \\end{pmatrix}",
        "math",
        box("\\begin{pmatrix} 0.5 \\\\ 0 \\end{pmatrix}"),
        True,
        "vector entries in another form",
    ),
    # equations, expressions
    ("x=5", "math500", box("5"), True, "equation gold, value prediction"),
    ("5", "math500", box("x=5"), True, "value gold, equation prediction"),
    ("x=5", "math500", box("x=-5"), False, "equation sign"),
    ("y = 2x + 3", "math", box("y=2x+3"), True, "line equation"),
    ("y = 2x + 3", "math", box("y=3x+2"), False, "line coefficients swapped"),
    ("n=k+4", "olympiadbench", box("k+4"), True, "assignment gold"),
    ("x^3+3x-6", "math500", box("x^3+3x-6"), True, "polynomial"),
    ("x^3+3x-6", "math500", box("3x+x^3-6"), True, "polynomial reordered"),
    ("x^3+3x-6", "math500", box("x^3+3x+6"), False, "polynomial constant sign"),
    ("\\frac{1}{4} n(n+1)", "olympiadbench", box("\\frac{n(n+1)}{4}"), True, "symbolic equivalent"),
    ("\\frac{1}{4} n(n+1)", "olympiadbench", box("\\frac{n(n-1)}{4}"), False, "symbolic off"),
    ("\\frac{n(n+1)(2 n+1)}{6}", "olympiadbench", box("\\frac{2n^3+3n^2+n}{6}"), True, "expanded sum of squares"),
    ("\\cot x", "math500", box("\\frac{\\cos x}{\\sin x}"), True, "trig identity"),
    ("\\cot x", "math500", box("\\tan x"), False, "tan vs cot"),
    ("p - q", "math500", box("-q+p"), True, "expression reordered"),
    ("p - q", "math500", box("q - p"), False, "expression negated"),
    ("4 \\pi^{2}-1", "olympiadbench", box("4\\pi^2 - 1"), True, "pi expression"),
    # radicals, complex, pi, bases
    ("3\\sqrt{13}", "math500", box("\\sqrt{117}"), True, "radical simplified"),
    ("3\\sqrt{13}", "math500", box("3\\sqrt{31}"), False, "radical digits swapped"),
    ("11\\sqrt2", "math500", box("11\\sqrt{2}"), True, "sqrt without braces"),
    ("\\frac{3\\sqrt{3}}{4}", "math500", box("\\frac{3}{4}\\sqrt{3}"), True, "radical fraction"),
    ("\\frac{3\\sqrt{3}}{4}", "math500", box("\\frac{3\\sqrt{3}}{2}"), False, "radical fraction denominator"),
    ("6 - 5i", "math500", box("6-5i"), True, "complex"),
    ("6 - 5i", "math500", box("6+5i"), False, "complex conjugate"),
    ("-\\frac{\\pi}{6}", "math500", box("-\\pi/6"), True, "pi fraction"),
    ("-\\frac{\\pi}{6}", "math500", box("\\frac{\\pi}{6}"), False, "pi fraction sign"),
    ("\\pi", "math500", box("\\pi"), True, "pi"),
    ("\\pi", "math500", box("3.14"), False, "pi approximated"),
    ("52_8", "math500", box("52_8"), True, "base subscript"),
    ("2516_8", "math500", box("2516_{8}"), True, "base subscript braced"),
    ("2516_8", "math500", box("2561_8"), False, "base digits"),
    ("9901", "math500", box("9,901"), True, "comma in prediction"),
    # extraction behaviour
    ("7", "math", f"{COT}Maybe $\\boxed{{5}}$? No, recheck: the answer is $\\boxed{{7}}$.", True, "last box wins"),
    (
        "5",
        "math",
        f"{COT}Maybe $\\boxed{{5}}$? No, recheck: the answer is $\\boxed{{7}}$.",
        False,
        "earlier box ignored",
    ),
    ("7", "math", f"{COT}The answer is $7$.", True, "'the answer is' without a box"),
    ("7", "math", f"{COT}Final Answer: 7", True, "'Final Answer:' line"),
    ("7", "math", f"{COT}I think it is about seven.", False, "no answer"),
    ("7", "math", f"{COT}so we computed 3 + 4 = 7 and", False, "truncated without box; no last-number fallback"),
    ("7", "math", f"{COT}Thus the answer is \\boxed{{7", False, "unbalanced truncated box"),
    ("\\frac{1}{2}", "math", f"{COT}\\boxed{{\\frac{{1}}{{2}}}}", True, "nested braces inside box"),
    ("\\frac{1}{2}", "math", f"{COT}\\fbox{{\\frac{{1}}{{2}}}}", True, "fbox"),
    ("5", "math", f"{COT}Hence \\boxed 5.", True, "boxed without braces"),
    ("5", "math", f"{COT}Hence $\\boxed{{\\boxed{{5}}}}$.", True, "double box"),
    ("\\{1,2\\}", "math", f"{COT}\\boxed{{\\{{1,2\\}}}}", True, "escaped braces inside box"),
    (
        "12",
        "math",
        f"{COT}Each side is 3, so perimeter is $\\boxed{{12}}$ units.\n\nNote the area is 9.",
        True,
        "text after the box",
    ),
    (
        "18",
        "gsm8k",
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18",
        True,
        "gsm8k gold solution as completion",
    ),
    ("18", "gsm8k", f"{COT}She makes $18 every day.\n#### 16", False, "gsm8k wrong final"),
    ("18", "gsm8k", f"{COT}The answer is 18 dollars.", True, "'the answer is N dollars'"),
    ("18", "gsm8k", f"{COT}The answer is 81.", False, "'the answer is' wrong"),
    # unparseable gold -> null
    (None, "math", box("5"), None, "no gold at all"),
    ("", "math500", box("5"), None, "empty gold"),
    ([], "olympiadbench", box("5"), None, "empty final_answer list"),
    ("The answer is \\boxed{5", "math", box("5"), None, "gold solution with an unbalanced box"),
    (True, "math", box("5"), None, "boolean gold"),
    # multiple choice (GPQA style)
    ("B", "gpqa", f"{COT}The answer is (B).", True, "choice letter"),
    ("B", "gpqa", box("B"), True, "boxed letter"),
    ("B", "gpqa", box("\\text{(B)}"), True, "boxed text letter"),
    ("B", "gpqa", box("C"), False, "wrong letter"),
    ("(B)", "gpqa", f"{COT}Answer: B", True, "gold in parentheses"),
]


# (gold, source, completion, expected, note): written in the styles real models answer in (Qwen2.5-Math, Llama,
# DeepSeek-style long reasoning, Minerva, GPQA), each verdict checked by hand.
LONG = (
    "To solve this problem, we need to carefully consider every condition.\n\n"
    "**Step 1: Understand the setup.**\nWe are told the quantities are related linearly, so we write the equation "
    "and isolate the unknown.\n\n**Step 2: Compute.**\n"
)


def long_answer(*boxes: str, closing: str = "") -> str:
    """A long solution that boxes intermediate results and ends with the last one."""
    body = LONG
    for i, answer in enumerate(boxes[:-1]):
        body += f"For part {i + 1} the intermediate value is $\\boxed{{{answer}}}$, which we use next.\n\n"
    body += f"**Final Answer**\n\\[\n\\boxed{{{boxes[-1]}}}\n\\]{closing}"
    return body


MODEL_STYLES: list[tuple] = [
    # long solutions with several boxes: the last one is the answer
    ("12", "math500", long_answer("8", "12"), True, "long solution, intermediate box then final box"),
    ("8", "math500", long_answer("8", "12"), False, "long solution, gold only in an intermediate box"),
    ("\\frac{7}{2}", "math500", long_answer("3", "5", "\\dfrac{7}{2}"), True, "three boxes, dfrac last"),
    (
        "\\frac{7}{2}",
        "math500",
        long_answer("\\dfrac{7}{2}", "\\dfrac{2}{7}"),
        False,
        "three boxes, last is reciprocal",
    ),
    (
        "6",
        "math",
        f"{LONG}So $x = \\boxed{{5}}$.\n\nWait, let me double-check the second equation. Substituting back, "
        f"$2(5) + 1 = 11 \\neq 13$, so I made an error. Redoing it: $2x + 1 = 13$ gives $x = 6$.\n\n"
        f"The answer is $\\boxed{{6}}$.",
        True,
        "self-correction: a later box replaces an earlier one",
    ),
    (
        "5",
        "math",
        f"{LONG}So $x = \\boxed{{5}}$.\n\nWait, let me double-check. Actually $x = 6$, so the answer is "
        f"$\\boxed{{6}}$.",
        False,
        "self-correction away from the gold",
    ),
    (
        "-4",
        "minerva",
        f"{LONG}Thus the result is $-4$.\nFinal Answer: The final answer is $\\boxed{{-4}}$. I hope it is correct.",
        True,
        "Minerva closing sentence",
    ),
    (
        "-4",
        "minerva",
        f"{LONG}Final Answer: The final answer is $\\boxed{{4}}$. I hope it is correct.",
        False,
        "Minerva closing sentence, sign lost",
    ),
    (
        "15",
        "math500",
        f"{LONG}Adding the two counts, $7 + 8 = 15$.\n\n**Answer:** $\\boxed{{15}}$",
        True,
        "markdown bold answer label",
    ),
    (
        "15",
        "math500",
        f"{LONG}\\[ 7 + 8 = \\boxed{{15}} \\]\nThis matches the check above.",
        True,
        "box inside display math, text after",
    ),
    ("9", "math500", f"{LONG}First $\\boxed{{3}}$ squared is $\\boxed{{9}}$.", True, "every step boxed, last wins"),
    ("\\sqrt{5}", "math500", long_answer("5", "\\sqrt{5}"), True, "intermediate square, final root"),
    (
        "2",
        "math500",
        f"{LONG}<think>\nLet me see, 1 + 1 = 2.\n</think>\n\nThe sum is $\\boxed{{2}}$.",
        True,
        "reasoning-model think block before the answer",
    ),
    (
        "2",
        "math500",
        "<think>\nMaybe it is \\boxed{3}? No: 1 + 1 = 2.\n</think>\nThe answer is $\\boxed{2}$.",
        True,
        "box inside the think block, final box after",
    ),
    (
        "2",
        "math500",
        "<think>\nMaybe it is 2, or 3. I keep going back and forth and run out of",
        False,
        "cut off inside the think block: no answer",
    ),
    ("-\\frac{1}{3}", "math500", long_answer("\\frac{1}{3}", "-\\frac{1}{3}"), True, "final box negates earlier"),
    ("100", "math", long_answer("10", "10^2"), True, "power form of the final answer"),
    (
        "24",
        "math",
        f"{LONG}There are $4! = 24$ orderings.\n\nTherefore, the final answer is: $\\boxed{{24}}$",
        True,
        "'final answer is:' with colon",
    ),
    (
        "24",
        "math",
        f"{LONG}There are $4! = 24$ orderings.\n\nTherefore, the final answer is: $\\boxed{{4!}}$",
        True,
        "factorial notation in the box",
    ),
    ("720", "math", f"{LONG}Hence $\\boxed{{6!}}$ arrangements.", True, "6! for 720"),
    # units
    ("48", "math500", long_answer("4", "48\\text{ inches}"), True, "unit text in the final box"),
    ("5", "math500", long_answer("5 \\text{ meters}"), True, "spelled-out unit"),
    ("5", "math500", long_answer("6 \\text{ meters}"), False, "spelled-out unit, wrong value"),
    ("36", "math500", long_answer("36\\text{ cm}^2"), True, "area unit"),
    ("\\$42", "math", long_answer("42"), True, "dollar gold, bare number"),
    ("\\$42", "math", long_answer("\\$24"), False, "dollar amount digits swapped"),
    ("12", "math", long_answer("12 \\text{ hours}"), True, "hours"),
    ("12", "math", long_answer("13 \\text{ hours}"), False, "hours, wrong value"),
    ("30^\\circ", "math500", long_answer("30^{\\circ}"), True, "degrees in long solution"),
    ("30^\\circ", "math500", long_answer("60^{\\circ}"), False, "complementary angle"),
    ("45", "gsm8k", f"{LONG}It takes 45 minutes in total.\n#### 45", True, "gsm8k style after a long solution"),
    ("45", "gsm8k", f"{LONG}The answer is 45 minutes.", True, "'the answer is N minutes'"),
    ("45", "gsm8k", f"{LONG}The answer is 54 minutes.", False, "'the answer is', minutes, digits swapped"),
    # text answers
    ("\\text{east}", "math500", long_answer("\\text{east}"), True, "direction word"),
    ("\\text{east}", "math500", long_answer("\\text{west}"), False, "opposite direction"),
    ("\\text{odd}", "math500", long_answer("\\text{odd}"), True, "parity word"),
    ("\\text{odd}", "math500", long_answer("\\text{even}"), False, "wrong parity"),
    ("\\text{Tuesday}", "math500", long_answer("\\text{Tuesday}"), True, "weekday"),
    ("\\text{Tuesday}", "math500", long_answer("\\text{Thursday}"), False, "wrong weekday"),
    ("\\text{Devon}", "math500", long_answer("\\text{Devon}"), True, "a name"),
    ("\\text{Devon}", "math500", long_answer("\\text{Alex}"), False, "another name"),
    # multiple choice
    (
        "C",
        "gpqa",
        f"{LONG}Option (A) ignores the spin; (B) double counts; (D) has the wrong sign.\nThe answer is (C).",
        True,
        "GPQA long elimination, 'the answer is (C)'",
    ),
    (
        "C",
        "gpqa",
        f"{LONG}Option (C) looks tempting, but it fails the limit check.\nThe answer is (A).",
        False,
        "GPQA: a mentioned option is not the answer",
    ),
    ("D", "gpqa", f"{LONG}Answer: (A)", False, "GPQA 'Answer:' wrong letter"),
    ("D", "gpqa", f"{LONG}Answer: D", True, "GPQA 'Answer:' right letter"),
    ("A", "gpqa", f"{LONG}Thus the correct choice is $\\boxed{{A}}$.", True, "GPQA boxed letter after long text"),
    ("A", "gpqa", f"{LONG}Thus the correct choice is $\\boxed{{B}}$.", False, "GPQA boxed wrong letter"),
    ("\\text{(E)}", "math500", long_answer("\\text{(E)}"), True, "MATH multiple choice letter in text"),
    ("\\text{(E)}", "math500", long_answer("\\text{(B)}"), False, "MATH multiple choice, wrong letter"),
    # numbers in model styles
    ("1.5", "math500", long_answer("\\frac{3}{2}"), True, "decimal gold, fraction in long solution"),
    ("0.25", "math500", long_answer("\\frac{1}{4}"), True, "quarter"),
    ("0.25", "math500", long_answer("\\frac{1}{5}"), False, "fifth is not a quarter"),
    ("2\\sqrt{2}", "math500", long_answer("\\sqrt{8}"), True, "unsimplified radical"),
    ("2\\sqrt{2}", "math500", long_answer("\\sqrt{2}"), False, "radical coefficient lost"),
    ("-7", "math500", long_answer("-7"), True, "negative integer"),
    ("-7", "math500", long_answer("7"), False, "negative integer, sign lost"),
    ("1000", "gsm8k", f"{LONG}So she earns $1,000 in total.\n#### 1,000", True, "gsm8k thousands separator"),
    ("1000", "gsm8k", f"{LONG}So she earns $100 in total.\n#### 100", False, "gsm8k factor of ten"),
    ("\\frac{\\pi}{4}", "math500", long_answer("\\dfrac{\\pi}{4}"), True, "pi over four"),
    ("\\frac{\\pi}{4}", "math500", long_answer("\\frac{4}{\\pi}"), False, "pi fraction inverted"),
    ("(2,3)", "math500", long_answer("(2, 3)"), True, "point in a long solution"),
    ("(2,3)", "math500", long_answer("(3, 2)"), False, "point coordinates swapped in a long solution"),
    ("x^2-4", "math500", long_answer("(x-2)(x+2)"), True, "factored polynomial"),
    ("x^2-4", "math500", long_answer("(x-2)^2"), False, "wrong factorisation"),
    # no answer in the completion
    (
        "10",
        "math500",
        f"{LONG}We have set up everything; the remaining computation is routine.",
        False,
        "long solution that never states an answer",
    ),
    (
        "10",
        "math500",
        f"{LONG}Substituting, we get $5 \\cdot 2 = 10$, so the answer should be",
        False,
        "cut off before the answer: the number in the text is not taken",
    ),
    # unparseable gold -> null, whatever the completion says
    ("The sum is \\boxed{}.", "math", long_answer("5"), None, "MATH solution with an empty box"),
    ("   ", "math500", long_answer("5"), None, "whitespace-only gold"),
    ([""], "olympiadbench", long_answer("5"), None, "OlympiadBench list with an empty answer"),
    (None, "gsm8k", f"{LONG}#### 5", None, "missing GSM8K gold"),
]


def load(name: str) -> list[dict]:
    path = SHARED / name
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()] if path.exists() else []


def int_like(text: str) -> bool:
    return re.fullmatch(r"-?\d+", text) is not None


def generated(rng: random.Random) -> list[tuple]:
    cases: list[tuple] = []
    math500 = [r["answer"] for r in load("math500/test.jsonl")]
    ints = [a for a in math500 if int_like(a) and a not in ("0",)]
    for ans in rng.sample(ints, 40):
        n = int(ans)
        cases.append((ans, "math500", box(str(n)), True, "MATH-500 integer, boxed"))
        cases.append((ans, "math500", f"{COT}The answer is ${n}$.", True, "MATH-500 integer, 'the answer is'"))
        cases.append((ans, "math500", box(str(n + 1)), False, "MATH-500 integer off by one"))
        cases.append((ans, "math500", box(str(-n)), False, "MATH-500 integer sign flipped"))
    fracs = [a for a in math500 if re.fullmatch(r"-?\\frac\{\d+\}\{\d+\}", a)]
    for ans in fracs[:20]:
        num, den = re.findall(r"\d+", ans)
        neg = ans.startswith("-")
        cases.append((ans, "math500", box(f"{'-' if neg else ''}{num}/{den}"), True, "MATH-500 fraction as a/b"))
        if num != den:
            cases.append(
                (
                    ans,
                    "math500",
                    box(f"{'-' if neg else ''}\\frac{{{den}}}{{{num}}}"),
                    False,
                    "MATH-500 fraction reciprocal",
                )
            )
    gsm = load("gsm8k/test.jsonl")
    for row in rng.sample(gsm, 30):
        gold = row["answer"].rsplit("####", 1)[1].strip()
        n = int(gold.replace(",", ""))
        cases.append(
            (
                row["answer"],
                "gsm8k",
                f"{COT}So the final count is {n:,}.\n#### {n:,}",
                True,
                "GSM8K solution gold, #### with thousands separators",
            )
        )
        cases.append((gold, "gsm8k", f"{COT}#### {n + 10}", False, "GSM8K off by ten"))
    for row in load("amc23/test.jsonl")[:20]:
        n = int(row["answer"])
        cases.append((row["answer"], "amc23", box(str(n)), True, "AMC float gold vs integer"))
        cases.append((row["answer"], "amc23", box(str(n * 10)), False, "AMC times ten"))
    for row in load("aime24/test.jsonl")[:15]:
        n = int(row["answer"])
        cases.append((row["answer"], "aime24", box(str(n)), True, "AIME string gold (leading zeros)"))
        cases.append((row["answer"], "aime24", box(str(n + 100)), False, "AIME off by 100"))
    olym = [
        r
        for r in load("olympiadbench/test.jsonl")
        if len(r["final_answer"]) == 1
        and int_like(r["final_answer"][0].strip("$ "))
        and r["final_answer"][0].strip("$ ") != "0"
    ]
    for row in olym[:20]:
        n = int(row["final_answer"][0].strip("$ "))
        cases.append((row["final_answer"], "olympiadbench", box(str(n)), True, "OlympiadBench integer list gold"))
        cases.append((row["final_answer"], "olympiadbench", box(str(n - 1)), False, "OlympiadBench off by one"))
    return cases


def main() -> None:
    rng = random.Random(0)
    rows, seen, duplicates = [], set(), 0
    cases = [(case, "hand") for case in HAND + MODEL_STYLES] + [(case, "templated") for case in generated(rng)]
    for (gold, source, completion, expected, note), origin in cases:
        if isinstance(gold, float) and gold != gold:
            gold = "NaN"  # JSON has no NaN: store the string; the test maps it back
            note += " (stored as the string 'NaN')"
        key = (json.dumps(gold), source, completion)
        if key in seen:  # the templates draw the same gold answer twice now and then: keep one case
            duplicates += 1
            continue
        seen.add(key)
        rows.append(
            {
                "gold": gold,
                "source": source,
                "completion": completion,
                "expected": expected,
                "note": note,
                "origin": origin,
            }
        )
    out = HERE / "verify_corpus.jsonl"
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    hand = sum(r["origin"] == "hand" for r in rows)
    print(
        f"wrote {len(rows)} cases to {out}: {hand} hand-written, {len(rows) - hand} templated "
        f"({duplicates} duplicates dropped)"
    )


if __name__ == "__main__":
    main()
