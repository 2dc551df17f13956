"""Report: compare evaluation results (``results.json`` from ``w2sr evaluate``) side by side.

``python -m w2sr.report runs/quickstart/eval-before/results.json runs/quickstart/eval-after/results.json`` prints one
row per results file (run, model, problems, accuracy and the change from the first file) as a rich table;
``--teacher verify_summary.json`` adds the accuracy of the teacher's traces (``w2sr verify --summary``) for
comparison, and ``--json PATH`` also writes the comparison. Exercised by ``make quickstart`` and ``pytest tests/test_report.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from w2sr.jsonl import InputError, write_json


def load_results(path: str | Path) -> dict[str, Any]:
    """One ``results.json``; errors name the file and the missing field."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON ({err.msg})", path=path, line=err.lineno) from None
    for key in ("model", "overall"):
        if key not in results:
            raise InputError("missing required field", path=path, field=key)
    return results


def compare(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Rows of (file, model, accuracy, delta from the first file)."""
    rows = []
    baseline = None
    for path in paths:
        results = load_results(path)
        accuracy = results["overall"]["accuracy"]
        if baseline is None:
            baseline = accuracy
        delta = accuracy - baseline if accuracy is not None and baseline is not None else None
        rows.append({"results": str(path), "run": Path(path).parent.name, "model": results["model"], "problems": results["overall"]["problems"],
                     "samples": results["overall"]["samples"], "accuracy": accuracy, "delta": delta})
    return rows


def comparison_table(rows: list[dict[str, Any]], title: str = "Reasoning accuracy") -> Table:
    table = Table(title=title)
    for column in ("run", "model", "problems", "accuracy", "change"):
        table.add_column(column, justify="right" if column in ("problems", "accuracy", "change") else "left",
                         overflow="fold")
    for row in rows:
        accuracy = f"{row['accuracy']:.1%}" if row["accuracy"] is not None else "n/a"
        delta = f"{row['delta']:+.1%}" if row["delta"] is not None else "n/a"
        table.add_row(row["run"], row["model"], str(row["problems"]), accuracy, delta)
    return table


def teacher_row(summary_path: str | Path, baseline: float | None) -> dict[str, Any]:
    """A row for the teacher's traces from a ``w2sr verify --summary`` file."""
    path = Path(summary_path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read the verification summary ({err})", path=path) from None
    if "accuracy" not in summary:
        raise InputError("missing required field", path=path, field="accuracy")
    accuracy = summary["accuracy"]
    delta = accuracy - baseline if accuracy is not None and baseline is not None else None
    return {"results": str(path), "run": "teacher traces", "model": "weak teacher (training problems)",
            "problems": summary.get("problems", summary.get("records")), "accuracy": accuracy, "delta": delta}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m w2sr.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.json files; the first is the baseline")
    parser.add_argument("--teacher", help="a `w2sr verify --summary` JSON: add the teacher traces' accuracy")
    parser.add_argument("--json", help="also write the comparison to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    try:
        rows = compare(args.results)
        if args.teacher:
            rows.insert(1, teacher_row(args.teacher, rows[0]["accuracy"]))
        if args.json:
            write_json(args.json, rows, overwrite=args.overwrite)
    except InputError as err:
        Console(stderr=True).print(f"[bold red]w2sr report: error:[/bold red] {err}", highlight=False)
        sys.exit(2)
    Console().print(comparison_table(rows))


if __name__ == "__main__":
    main()
