"""``w2sr evaluate``'s generations on disk: one crash-safe, resumable traces file per benchmark.

While ``w2sr evaluate`` generates, each benchmark's samples are streamed problem by problem into
``<output_dir>/generations/<benchmark>.jsonl`` (with its generation card ``.card.json``), by the generation stage's
own store (``w2sr.generation.jobs`` / ``store``: flushed per problem, fsynced every few seconds, a torn last line cut
on resume). A run that is killed (SIGKILL included) or stopped keeps them; ``--resume true`` continues where they
stop (refused, exit 2, when the prompt, sampling, model, adapter, quantization or backend differ from the cards'), and
the scores of the resumed run equal an uninterrupted run's: every run scores what it reads back from these files.
Once results.json and predictions.jsonl are written the folder is removed. An existing folder without
``--resume true`` is refused (exit 2, saying how to continue); ``--overwrite true`` starts again. Exercised by
``pytest tests/evaluation/test_evaluate_resume.py``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from w2sr.generation.card import GenerationStats, card_path
from w2sr.generation.jobs import GenerateJob, prepare_output
from w2sr.generation.store import part_files, read_records
from w2sr.records.jsonl import OutputExistsError
from w2sr.records.prompts import PromptOptions

GENERATIONS = "generations"
BENCHMARK_FIELD = "benchmark"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def generations_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / GENERATIONS


def stream_path(output_dir: str | Path, benchmark: str) -> Path:
    """The traces file of one benchmark (a name that is not a safe file name gets a short hash of itself)."""
    safe = _SAFE.sub("_", benchmark).strip("._") or "problems"
    if safe != benchmark:
        safe += "-" + hashlib.sha256(benchmark.encode()).hexdigest()[:8]
    return generations_dir(output_dir) / f"{safe}.jsonl"


def leftover_files(output_dir: str | Path) -> list[Path]:
    """Traces files (and part files) holding samples of an earlier run in ``<output_dir>/generations`` (a run that
    stopped before its first sample leaves none: only cards)."""
    folder = generations_dir(output_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.jsonl") if p.is_file() and p.stat().st_size > 0)


def evaluation_jobs(
    output_dir: str | Path,
    tasks: list[Any],
    prompt: PromptOptions,
    settings_of: Callable[[Any], dict[str, Any]],
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
) -> list[GenerateJob]:
    """One generation job per benchmark, checked before any model is loaded: leftovers of an interrupted run need
    ``--resume true`` (same settings) or ``--overwrite true`` (removed here)."""
    leftovers = leftover_files(output_dir)
    if leftovers and not resume and not overwrite:
        raise OutputExistsError(
            f"an interrupted evaluation left its samples here ({len(leftovers)} files); pass --resume true to "
            "continue it or --overwrite true to start again",
            path=generations_dir(output_dir),
        )
    if not resume:  # overwrite, or a run that stopped before its first sample: its cards and empty files go
        clear_generations(output_dir)
    jobs = []
    for task in tasks:
        job = GenerateJob(
            output=str(stream_path(output_dir, task.name)),
            problems=task.problems,
            prompt=prompt,
            sampling=task.sampling,
            settings=settings_of(task),
            resume=resume,
            progress=progress,
            command=f"w2sr evaluate ({task.name})",
        )
        prepare_output(job)  # a resumed file made with other settings: exit 2
        jobs.append(job)
    return jobs


def read_generations(jobs: list[GenerateJob], tasks: list[Any]) -> list[dict[str, Any]]:
    """Every benchmark's records in task, problem and sample order, each with its ``benchmark``; records of
    problems or samples outside this run (an earlier run with a larger ``--limit`` or ``n``) are left out."""
    records: list[dict[str, Any]] = []
    for job, task in zip(jobs, tasks):
        position = {problem.id: index for index, problem in enumerate(task.problems)}
        rows = [
            r for r in read_records(Path(job.output)) if str(r["id"]) in position and int(r["sample"]) < task.sampling.n
        ]
        rows.sort(key=lambda r: (position[str(r["id"])], int(r["sample"])))
        records.extend({**row, BENCHMARK_FIELD: task.name} for row in rows)
    return records


def clear_generations(output_dir: str | Path) -> None:
    """Remove the traces, part and card files of ``<output_dir>/generations`` (and the folder when left empty)."""
    folder = generations_dir(output_dir)
    if not folder.is_dir():
        return
    for path in [*folder.glob("*.jsonl"), *folder.glob("*.jsonl.card.json")]:
        path.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def remove_generations(output_dir: str | Path, jobs: list[GenerateJob]) -> None:
    """After results.json is written: the streamed files (and the folder, when nothing else is in it)."""
    for job in jobs:
        for path in (Path(job.output), card_path(job.output), *part_files(job.output)):
            path.unlink(missing_ok=True)
    folder = generations_dir(output_dir)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def say_how_to_resume(output_dir: str | Path, console: Console | None = None) -> None:
    """After an interruption or a crash: where the samples are kept and how to continue."""
    if not leftover_files(output_dir):
        return
    (console or Console(stderr=True)).print(
        f"w2sr evaluate: the samples generated so far are kept in {generations_dir(output_dir)}; run the same "
        "command again with --resume true to continue from them (or --overwrite true to start again)",
        highlight=False,
    )


def generate_benchmarks(
    output_dir: str | Path,
    tasks: list[Any],
    prompt: PromptOptions,
    settings_of: Callable[[Any], dict[str, Any]],
    generate: Callable[[list[GenerateJob]], list[dict[str, Any]]],
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
) -> tuple[list[GenerateJob], list[dict[str, Any]], list[dict[str, Any]]]:
    """Check, then complete every benchmark's traces file (``generate``: the jobs -> their generation cards) and read
    the records back: ``(jobs, cards, records)``. An interruption or a crash says how to resume before it is
    raised on."""
    jobs = evaluation_jobs(
        output_dir, tasks, prompt, settings_of, resume=resume, overwrite=overwrite, progress=progress
    )
    try:
        cards = generate(jobs)
    except BaseException:
        say_how_to_resume(output_dir)
        raise
    return jobs, cards, read_generations(jobs, tasks)


def total_stats(cards: list[dict[str, Any]]) -> GenerationStats:
    """What this run generated over all benchmarks (from their generation cards; benchmarks run one after another,
    so their wall times add up)."""
    total = GenerationStats()
    for card in cards:
        total.merge(
            GenerationStats(
                problems=card.get("problems_generated", 0),
                samples=card.get("samples_generated", 0),
                tokens_generated=card.get("tokens_generated", 0),
                truncated=card.get("truncated", 0),
                capped_prompts=card.get("capped_prompts", 0),
                skipped_prompts=card.get("skipped_prompts", 0),
                skipped_ids=list(card.get("skipped_ids", [])),
                resumed_samples=card.get("resumed_samples", 0),
            )
        )
    total.generation_s = sum(card.get("wall_time_s") or 0.0 for card in cards)
    return total
