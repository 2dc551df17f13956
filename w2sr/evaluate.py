"""Evaluation: a model (or base + adapter) on a problem file -> generate -> verify -> accuracy report.

Writes ``<output_dir>/results.json`` (settings, counts, accuracy) and ``<output_dir>/predictions.jsonl`` (verified
traces), both atomically, and prints a rich table. Accuracy is the mean over all samples (avg@n; pass@1 for n=1),
over problems whose gold answer could be parsed. Exercised by
``w2sr evaluate --model.model_name_or_path MODEL --problems data/toy/test.jsonl --output_dir runs/eval`` and
``pytest tests/test_cli_e2e.py``.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from w2sr import __version__
from w2sr.generation.base import GenerationBackend, SamplingOptions
from w2sr.generation.card import GenerationStats, write_generation_card
from w2sr.generation.run import generate_traces
from w2sr.jsonl import check_output, write_json, write_jsonl
from w2sr.problems import Problem
from w2sr.prompts import PromptOptions
from w2sr.verify import VerifyOptions, summarize, verify_records


def accuracy_table(results: dict[str, Any], title: str = "Evaluation") -> Table:
    """Accuracy per source and overall, as a rich table."""
    table = Table(title=title)
    for column in ("source", "problems", "samples", "scored", "accuracy", "no answer", "truncated"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name, row in {**results["by_source"], "all": results["overall"]}.items():
        table.add_row(name, str(row["problems"]), str(row["samples"]), str(row["scored"]),
                      f"{row['accuracy']:.2%}" if row["accuracy"] is not None else "n/a",
                      f"{row['no_answer_rate']:.1%}", f"{row['truncated_rate']:.1%}")
    return table


def score(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and accuracy over verified records (``correct`` null = gold not parseable, not scored)."""
    scored = [r for r in records if r.get("correct") is not None]
    return {
        "problems": len({r["id"] for r in records}),
        "samples": len(records),
        "scored": len(scored),
        "correct": sum(bool(r["correct"]) for r in scored),
        "accuracy": sum(bool(r["correct"]) for r in scored) / len(scored) if scored else None,
        "no_answer_rate": sum(r.get("prediction") is None for r in records) / max(1, len(records)),
        "truncated_rate": sum(r.get("finish_reason") == "length" for r in records) / max(1, len(records)),
    }


def run_evaluation(backend: GenerationBackend, tokenizer: Any, problems: list[Problem], output_dir: str | Path, *,
                   prompt: PromptOptions, sampling: SamplingOptions, verify: VerifyOptions, model_label: str,
                   problems_source: str, overwrite: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Generate, verify and score; write results and predictions; print and return the results."""
    output_dir = Path(output_dir)
    results_path = check_output(output_dir / "results.json", overwrite)
    predictions_path = check_output(output_dir / "predictions.jsonl", overwrite)
    started = time.time()
    stats = GenerationStats()
    traces = generate_traces(backend, problems, tokenizer, prompt, sampling, stats=stats)
    generated = time.time()
    records = verify_records([t.to_dict() for t in traces], verify)
    by_source: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_source.setdefault(record.get("source") or "", []).append(record)
    results = {
        "model": model_label,
        "problems_file": problems_source,
        "overall": score(records),
        "by_source": {name: score(rows) for name, rows in sorted(by_source.items())},
        "verification": summarize(records, verify),
        "settings": {"prompt": asdict(prompt), "sampling": asdict(sampling), "verify": asdict(verify)},
        "timing_s": {"generate": round(generated - started, 3), "total": round(time.time() - started, 3)},
        "w2sr_version": __version__,
        "python": platform.python_version(),
    }
    write_jsonl(predictions_path, records, overwrite=overwrite)
    write_generation_card(predictions_path, backend=backend, model=model_label, prompt=prompt, sampling=sampling,
                          stats=stats, problems=len(problems))
    write_json(results_path, results, overwrite=overwrite)
    (console or Console()).print(accuracy_table(results, title=f"Evaluation of {model_label}"))
    return results
