"""Hints: warnings ``w2sr verify`` prints (and writes into the summary under ``warnings``) when its result is more
likely a setup mistake than the teacher's skill: no answer extracted from most completions, or an empty W2SR-P /
W2SR-N training set. A silent 16/16 ``no_answer`` and an empty ``w2sr_p.jsonl`` were what a new user got (issue 28).

Exercised by ``w2sr verify --split DIR`` and ``pytest tests/verification/test_verify.py -k warn``.
"""

from __future__ import annotations

from typing import Any

MOSTLY = 0.5  # "most completions": more than this share without an extracted answer
GRADER_READS = {
    "paper": "only the last \\boxed{}",
    "default": 'the last \\boxed{}, "the answer is" or "####"',
    "lenient": 'the last \\boxed{}, "the answer is", "####" or the last number',
}
SPLIT_EMPTY = {  # variant -> (what none of the completions were, the fit option that would find nothing)
    "correct": ("graded correct", "`w2sr fit --data.variant correct` (W2SR-P)"),
    "incorrect": ("graded wrong", "`w2sr fit --data.variant incorrect` (W2SR-N)"),
    "all": ("read", "`w2sr fit --data.variant all` (W2SR)"),
}


def summary_warnings(
    summary: dict[str, Any],
    grader: str,
    split_files: dict[str, str] | None = None,
    split_sizes: dict[str, int] | None = None,
) -> list[str]:
    """The warnings for a ``w2sr verify`` summary (see the module docstring); ``split_files``: variant -> the split
    file written (``--split``); ``split_sizes``: variant -> its records after curation (default: the summary's
    all / correct / wrong counts)."""
    warnings = []
    records, missing = summary.get("records") or 0, summary.get("no_answer") or 0
    if records and missing / records > MOSTLY:
        truncated = summary.get("truncated") or 0
        cut = (
            f"{truncated} of {records} were cut at the token limit (finish_reason length): raise "
            "--sampling.max_new_tokens when generating"
            if truncated
            else "none was cut at the token limit"
        )
        warnings.append(
            f"no answer could be extracted from {missing} of {records} completions ({100 * missing / records:.0f}%); "
            f"check the grader preset (--options.grader {grader} reads {GRADER_READS.get(grader, grader)}; "
            f"lenient also takes the last number), max_new_tokens ({cut}), and that the prompt asks for the final "
            "answer in \\boxed{} (the generation card's prompt template, --prompt.*)"
        )
    sizes = split_sizes or {
        "all": summary.get("records"),
        "correct": summary.get("correct"),
        "incorrect": summary.get("wrong"),
    }
    for variant, path in (split_files or {}).items():
        if sizes.get(variant) == 0:
            what, option = SPLIT_EMPTY[variant]
            warnings.append(f"the split {path} is empty: no completion was {what}, so {option} has nothing to train on")
    return warnings
