"""Summary: counts and rates over verified records (accuracy, no-answer, truncation, bad gold, timeouts, per-source
rows, completion lengths and the W2SR / W2SR-P / W2SR-N sizes), and their rich tables.

Exercised by ``w2sr verify --summary summary.json`` and ``pytest tests/verification/test_verify.py``.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from w2sr.records.traces import VARIANT_NAMES
from w2sr.verification.grade import VerifyOptions
from w2sr.verification.pool import ERROR, TIMEOUT


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered), 1),
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
        "min": ordered[0],
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def summarize(records: list[dict], options: VerifyOptions | None = None) -> dict:
    """Counts and rates over verified records (see the module docstring); accuracy is over ``correct`` not null."""
    options = options or VerifyOptions()
    total = len(records)
    right = sum(r.get("correct") is True for r in records)
    wrong = sum(r.get("correct") is False for r in records)
    truncated = [r for r in records if r.get(options.finish_reason_field) == "length"]
    statuses = Counter(
        str(r.get(options.status_field))
        for r in records
        if options.status_field and r.get(options.status_field) is not None
    )
    per_source: dict[str, dict[str, Any]] = {}
    for record in records:
        source = str(record.get(options.source_field) or "")
        entry = per_source.setdefault(source, {"records": 0, "scored": 0, "correct": 0, "bad_gold": 0})
        entry["records"] += 1
        entry["scored"] += record.get("correct") is not None
        entry["correct"] += record.get("correct") is True
        entry["bad_gold"] += record.get("correct") is None
    for entry in per_source.values():
        entry["accuracy"] = _rate(entry["correct"], entry["scored"])
    tokens = [
        r[options.tokens_field]
        for r in records
        if isinstance(r.get(options.tokens_field), (int, float)) and not isinstance(r.get(options.tokens_field), bool)
    ]
    ids = {str(r[options.id_field]) for r in records if options.id_field in r}
    return {
        "records": total,
        "grader": options.grader,
        "problems": len(ids) if ids else None,
        "scored": right + wrong,
        "correct": right,
        "wrong": wrong,
        "accuracy": _rate(right, right + wrong),
        "no_answer": sum(r.get("prediction") is None for r in records),
        "no_answer_rate": _rate(sum(r.get("prediction") is None for r in records), total),
        "truncated": len(truncated),
        "truncated_rate": _rate(len(truncated), total),
        "truncated_correct": sum(r.get("correct") is True for r in truncated),
        "bad_gold": sum(r.get("correct") is None for r in records),
        "timeouts": statuses.get(TIMEOUT, 0),
        "errors": statuses.get(ERROR, 0),
        "statuses": dict(statuses),
        "by_source": dict(sorted(per_source.items())),
        "completion_chars": _stats([len(r.get(options.completion_field) or "") for r in records]),
        "completion_tokens": _stats(tokens),
        "variants": {VARIANT_NAMES["all"]: total, VARIANT_NAMES["correct"]: right, VARIANT_NAMES["incorrect"]: wrong},
    }


def print_summary(summary: dict, console: Any = None, title: str = "Verification") -> None:
    """Render a summary as rich tables (overall, then per source)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("records", summary["records"]),
        ("scored (gold parsed)", summary["scored"]),
        ("accuracy", f"{pct(summary['accuracy'])} ({summary['correct']}/{summary['scored']})"),
        ("no answer", f"{summary['no_answer']} ({pct(summary['no_answer_rate'])})"),
        (
            "truncated (length)",
            f"{summary['truncated']} ({pct(summary['truncated_rate'])}), {summary['truncated_correct']} correct",
        ),
        ("bad gold (correct=null)", summary["bad_gold"]),
        ("timeouts", summary["timeouts"]),
        ("errors", summary["errors"]),
    ]
    for key in ("completion_chars", "completion_tokens"):
        stats = summary.get(key)
        if stats:
            rows.append(
                (
                    key.replace("_", " "),
                    f"mean {stats['mean']}, median {stats['median']}, p90 {stats['p90']}, max {stats['max']}",
                )
            )
    rows += [(f"{name} size", size) for name, size in summary["variants"].items()]
    curation = summary.get("curation")
    if curation:  # what went into the --split files
        capped = sum(curation["capped_by_max_per_problem"].values())
        rows.append(
            (
                "split files",
                ", ".join(f"{name} {size}" for name, size in curation["sets"].items())
                + f" (select {curation['select']}; left out: {curation['duplicates_removed']} duplicates, "
                f"{curation['over_max_completion_tokens']} over the token limit, {capped} over the per-problem cap, "
                f"{curation['correct_removed_by_select']} correct not selected)",
            )
        )
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    if len(summary["by_source"]) > 1 or any(summary["by_source"]):
        per = Table(title=f"{title}: by source")
        for column in ("source", "records", "scored", "correct", "accuracy", "bad gold"):
            per.add_column(column, justify="left" if column == "source" else "right")
        for source, entry in summary["by_source"].items():
            per.add_row(
                source or "-",
                str(entry["records"]),
                str(entry["scored"]),
                str(entry["correct"]),
                pct(entry["accuracy"]),
                str(entry["bad_gold"]),
            )
        console.print(per)
