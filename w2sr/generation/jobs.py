"""One traces file to complete: checks before any model is loaded, each process's share streamed crash-safe, the
parts merged in problem order, the generation card.

A :class:`GenerateJob` is what ``w2sr generate`` writes (``--output``) and what ``w2sr evaluate`` writes per benchmark
(``<output_dir>/generations/<benchmark>.jsonl``). :func:`prepare_output` refuses an existing output without
``--resume true`` / ``--overwrite`` and a resumed one made with other settings (exit 2). A job is run in three steps
that different processes may take: :func:`start_job` (the card says ``complete: false``, torn tails left by a kill
are cut), :func:`generate_share` (share ``rank`` of ``world``: every ``world``-th problem, skipping the ``(id,
sample)`` pairs any earlier run wrote; one process streams into the output itself, several each into a part file)
and :func:`finish_job` (the output rewritten atomically in problem order from itself and the parts, the card
complete). :func:`run_rank` chains them for the ranks Lightning's launcher starts (``--trainer.devices N``);
``w2sr.generation.engines`` for vLLM engine processes. Exercised by ``pytest tests/generation/test_generate_resume.py
tests/generation/test_generate_parallel.py tests/generation/test_engines.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from w2sr.generation.base import GenerationBackend, SamplingOptions
from w2sr.generation.card import (
    GenerationStats,
    build_card,
    card_path,
    check_same_settings,
    engine_parameters,
    write_card,
)
from w2sr.generation.run import stream_traces
from w2sr.generation.store import TraceWriter, finalize, part_files, part_path, repair_torn_tail, scan
from w2sr.records.cost import StageClock, StageCost, device_kind, peak_memory
from w2sr.records.jsonl import InputError, OutputExistsError
from w2sr.records.problems import Problem
from w2sr.records.prompts import PromptOptions

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class GenerateJob:
    """Everything one rank needs besides the model: where to write, how to sample, which settings made the file."""

    output: str
    problems: list[Problem]
    prompt: PromptOptions
    sampling: SamplingOptions
    settings: dict[str, Any]
    resume: bool = False
    overwrite: bool = False
    num_shards: int = 1
    shard_index: int = 0
    progress: bool = True
    command: str = "w2sr generate"
    device: str = "cpu"
    """Where the engine runs (``cpu``, ``cuda``), for the card's ``cost``."""
    devices: int | None = None
    """Devices one engine holds (a vLLM engine's GPUs); None: one per rank or engine."""


def prepare_output(job: GenerateJob) -> None:
    """Checks and clean-up before any model is loaded (launching process only): an existing output (or parts of an
    interrupted multi-rank run) needs ``--resume true`` or ``--overwrite``; resuming needs the same settings."""
    output = Path(job.output)
    if job.resume and job.overwrite:
        raise InputError("choose one of --resume true (continue) and --overwrite (start again)", field="resume")
    existing = [p for p in (output, *part_files(output)) if p.exists()]
    if existing and not job.resume and not job.overwrite:
        what = "output already exists" if output.exists() else f"parts of an interrupted run exist ({existing[0]})"
        raise OutputExistsError(f"{what}; pass --resume true to continue it or --overwrite to replace it", path=output)
    if job.overwrite:
        for path in (output, card_path(output), *part_files(output)):
            path.unlink(missing_ok=True)
    elif job.resume and existing:
        check_same_settings(output, job.settings)


def start_job(job: GenerateJob, world: int = 1, console: Console | None = None) -> None:
    """Before any share is generated (rank 0 / the launching process): the card marked incomplete, torn last lines
    cut off the output and the part files of this run's ``world``."""
    output = Path(job.output)
    write_card(
        output, build_card(job.settings, job.sampling, GenerationStats(), complete=False, extra=_layout(job, world))
    )
    for path in [output] + ([part_path(output, rank, world) for rank in range(world)] if world > 1 else []):
        _repair(path, console or Console(stderr=True), job.command)


def done_pairs(job: GenerateJob) -> set[tuple[str, int]]:
    """The ``(id, sample)`` pairs the output and every part file (of any earlier run) already hold."""
    output = Path(job.output)
    done: set[tuple[str, int]] = set()
    for path in {output, *part_files(output)}:
        done |= scan(path).done
    return done


def generate_share(
    job: GenerateJob,
    make_engine: Callable[[], tuple[GenerationBackend, PreTrainedTokenizerBase]],
    rank: int = 0,
    world: int = 1,
    progress: bool | None = None,
    exclude: set[int] | None = None,
) -> GenerationStats:
    """Generate share ``rank`` of ``world`` (the problems at positions ``p % world == rank``) into the output (one
    process) or this rank's part file; the engine is only built when something is left to generate. The statistics
    include this share's wall and CPU seconds (this process and its engine's processes, less ``exclude``'s)."""
    clock = StageClock(exclude=exclude or ())
    stats = _share(job, make_engine, rank, world, progress)
    stats.wall_seconds, stats.cpu_seconds = clock.wall_seconds(), clock.cpu_seconds()
    stats.peak_memory_bytes = peak_memory(job.device)
    return stats


def _share(
    job: GenerateJob,
    make_engine: Callable[[], tuple[GenerationBackend, PreTrainedTokenizerBase]],
    rank: int,
    world: int,
    progress: bool | None,
) -> GenerationStats:
    output = Path(job.output)
    target = output if world == 1 else part_path(output, rank, world)
    done = done_pairs(job)
    mine = job.problems[rank::world]
    stats = GenerationStats()
    if all((p.id, s) in done for p in mine for s in range(job.sampling.n)):  # nothing left: no model to load
        stats.resumed_samples = len(mine) * job.sampling.n
        return stats
    engine, tokenizer = make_engine()
    with TraceWriter(target) as writer:
        for traces in stream_traces(
            engine,
            mine,
            tokenizer,
            job.prompt,
            job.sampling,
            done=done,
            stats=stats,
            progress=(job.progress and rank == 0) if progress is None else progress,
        ):
            writer.append(t.to_dict() for t in traces)
    stats.parameters = engine_parameters(engine, job.settings.get("model"), job.settings.get("adapter"))
    return stats


def finish_job(
    job: GenerateJob,
    shares: list[GenerationStats],
    world: int = 1,
    started: float | None = None,
    console: Console | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge the output and its part files into the output in problem order (atomically), remove the parts, write
    the complete card (returned, with ``extra``) and say what was done."""
    output = Path(job.output)
    total = GenerationStats()
    for share in shares:
        total.merge(share)
    parts = part_files(output)
    records = finalize(output, [output, *parts], [p.id for p in job.problems])
    for part in parts:
        part.unlink(missing_ok=True)
    described = {
        **_layout(job, world),
        **(extra or {}),
        "problems": len(job.problems),
        "samples": records,
        "samples_generated": total.samples,
        "problems_generated": total.problems,
    }
    if started is not None:
        described["run_wall_time_s"] = round(time.time() - started, 3)
    described["cost"] = StageCost(
        stage="generate",
        wall_seconds=total.wall_seconds if started is None else time.time() - started,
        devices=(job.devices or 1) * world,
        device_kind=device_kind(job.device),
        cpu_seconds=total.cpu_seconds,
        tokens_generated=total.tokens_generated,
        parameters=total.parameters,
        peak_memory_bytes=total.peak_memory_bytes,
    ).to_dict()
    card = build_card(job.settings, job.sampling, total, complete=True, extra=described)
    write_card(output, card)
    (console or Console(stderr=True)).print(
        f"{job.command}: {records} traces for {len(job.problems)} problems in {output} "
        f"({total.samples} new, {total.resumed_samples} resumed; {total.tokens_generated} tokens, "
        f"{card['tokens_per_s'] or 0:.0f} tok/s; {total.capped_prompts} capped, "
        f"{total.skipped_prompts} skipped prompts); card: {card_path(output)}",
        highlight=False,
    )
    return card


def run_rank(
    job: GenerateJob,
    make_engine: Callable[[], tuple[GenerationBackend, PreTrainedTokenizerBase]],
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
    gather: Callable[[GenerationStats], list[GenerationStats]] | None = None,
    console: Console | None = None,
    other_ranks: Callable[[], set[int]] = set,
) -> dict[str, Any] | None:
    """Generate this rank's share of the problems into its file; rank 0 merges and writes the card (returned).
    ``other_ranks``: the pids of rank processes this one launched (their CPU time is theirs to count)."""
    console = console or Console(stderr=True)
    started = time.time()
    if rank == 0:
        start_job(job, world, console)
    barrier()  # every file is repaired before anyone reads it
    stats = generate_share(job, make_engine, rank, world, exclude=other_ranks())
    everyone = gather(stats) if gather is not None else [stats]
    barrier()  # every part is complete
    if rank != 0:
        return None
    return finish_job(job, everyone, world, started, console)


def _layout(job: GenerateJob, world: int) -> dict[str, Any]:
    return {
        "output": str(job.output),
        "problems_total": len(job.problems),
        "num_shards": job.num_shards,
        "shard_index": job.shard_index,
        "ranks": world,
    }


def _repair(path: Path, console: Console, command: str = "w2sr generate") -> None:
    dropped = repair_torn_tail(path)
    if dropped:
        console.print(
            f"{command}: dropped a torn last line ({dropped} bytes) of {path}, left by an "
            "interrupted run; its problem is generated again",
            highlight=False,
        )
