"""``w2sr generate`` on disk: shards, ranks, streaming output, resume, merge, generation card.

One process streams straight into ``--output``; with ``--trainer.devices N`` each of the N ranks (launched by
Lightning) takes every N-th problem and streams into its own part file, and rank 0 merges the parts into the output
in problem order. ``--num_shards N --shard_index I`` keeps the problems at positions ``p % N == I`` (after
``--limit``), so shards run on different machines can be concatenated. ``--resume true`` continues from whatever
the output and part files hold; a finished output is rewritten once, atomically, in problem order. Exercised by
``w2sr generate`` and ``pytest tests/generation/test_generate_resume.py tests/generation/test_generate_parallel.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from w2sr.generation import backends
from w2sr.generation.backends import Backend
from w2sr.generation.base import GenerationBackend, SamplingOptions
from w2sr.generation.card import (
    GenerationStats,
    build_card,
    card_path,
    check_same_settings,
    engine_parameters,
    generation_settings,
    write_card,
)
from w2sr.generation.run import stream_traces
from w2sr.generation.store import TraceWriter, finalize, part_files, part_path, repair_torn_tail, scan
from w2sr.generation.vllm import VLLMOptions, check_vllm
from w2sr.records.cost import StageClock, StageCost, device_kind, peak_memory
from w2sr.records.jsonl import InputError, OutputExistsError, check_not_input
from w2sr.records.options import document_fields
from w2sr.records.problems import FieldMap, Problem, load_problems
from w2sr.records.prompts import PromptOptions

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer
    from transformers import PreTrainedTokenizerBase


@document_fields
@dataclass(kw_only=True)
class GenerateRequest:
    """The options of ``w2sr generate`` (the ``model:`` group names the teacher), declared once: LightningCLI reads
    them from here (``w2sr.runtime.command_line.stage_method``)."""

    problems: str
    """a local .jsonl/.json/.parquet/.csv file or a ``datasets`` hub id."""
    output: str
    """the traces JSONL to write (appended problem by problem while running; ``<output>.card.json`` describes the
    run)."""
    fields: FieldMap = field(default_factory=FieldMap)
    """which input fields hold the problem, gold answer and id."""
    split: str = "test"
    """dataset split for hub ids."""
    subset: str | None = None
    """dataset configuration name for hub ids."""
    source_name: str | None = None
    """the ``source`` written into each record (default: from the file or hub id)."""
    limit: int | None = None
    """only the first N problems."""
    prompt: PromptOptions = field(default_factory=PromptOptions)
    """prompt template and overrides."""
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    """n, temperature, top_p, max_new_tokens, seed, batch_size."""
    backend: Backend = "hf"
    """``hf`` (Hugging Face generate, data-parallel over ``--trainer.devices``), ``vllm`` (the vLLM engine;
    ``pip install "w2sr[vllm]"``) or ``toy`` (the embedded programmatic weak teacher)."""
    vllm: VLLMOptions = field(default_factory=VLLMOptions)
    """the vLLM engine: tensor_parallel_size, gpu_memory_utilization, max_model_len, dtype, enable_prefix_caching,
    seed, enable_lora, max_lora_rank (with ``--backend vllm``)."""
    num_shards: int = 1
    """split the problems into this many shards (e.g. one per machine or job-array task)."""
    shard_index: int = 0
    """which shard this run generates: problems at positions ``p % num_shards == shard_index``."""
    resume: bool = False
    """continue an interrupted run: keep the (id, sample) pairs the output already holds."""
    overwrite: bool = False
    """replace an existing output."""


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
    device: str = "cpu"
    """Where the engine runs (``cpu``, ``cuda``), for the card's ``cost``."""
    devices: int | None = None
    """Devices the engine holds (a vLLM engine's GPUs); None: one per rank."""


def select_shard(problems: list[Problem], num_shards: int, shard_index: int) -> list[Problem]:
    """The problems at positions ``p % num_shards == shard_index``."""
    if num_shards < 1:
        raise InputError(f"must be at least 1, got {num_shards}", field="num_shards")
    if not 0 <= shard_index < num_shards:
        raise InputError(f"must be in [0, {num_shards}), got {shard_index}", field="shard_index")
    return problems[shard_index::num_shards]


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
    clock = StageClock(exclude=other_ranks())
    output = Path(job.output)
    target = output if world == 1 else part_path(output, rank, world)
    started = time.time()
    if rank == 0:
        for path in [output] if world > 1 else []:  # a torn tail left by an interrupted single-process run
            _repair(path, console)
        write_card(
            output, build_card(job.settings, job.sampling, GenerationStats(), complete=False, extra=_layout(job, world))
        )
    _repair(target, console)
    barrier()  # every file is repaired before anyone reads it
    done: set[tuple[str, int]] = set()
    for path in {output, *part_files(output)}:
        done |= scan(path).done
    mine = job.problems[rank::world]
    stats = GenerationStats()
    if all((p.id, s) in done for p in mine for s in range(job.sampling.n)):  # nothing left: no model to load
        stats.resumed_samples = len(mine) * job.sampling.n
    else:
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
                progress=job.progress and rank == 0,
            ):
                writer.append(t.to_dict() for t in traces)
        stats.parameters = engine_parameters(engine, job.settings.get("model"), job.settings.get("adapter"))
    stats.cpu_seconds, stats.peak_memory_bytes = clock.cpu_seconds(), peak_memory(job.device)
    everyone = gather(stats) if gather is not None else [stats]
    barrier()  # every part is complete
    if rank != 0:
        return None
    total = GenerationStats()
    for part in everyone:
        total.merge(part)
    parts = part_files(output)
    records = finalize(output, [output, *parts], [p.id for p in job.problems])
    for part in parts:
        part.unlink(missing_ok=True)
    card = build_card(
        job.settings,
        job.sampling,
        total,
        complete=True,
        extra={
            **_layout(job, world),
            "problems": len(job.problems),
            "samples": records,
            "samples_generated": total.samples,
            "problems_generated": total.problems,
            "run_wall_time_s": round(time.time() - started, 3),
            "cost": StageCost(
                stage="generate",
                wall_seconds=clock.wall_seconds(),
                devices=job.devices or world,
                device_kind=device_kind(job.device),
                cpu_seconds=total.cpu_seconds,
                tokens_generated=total.tokens_generated,
                parameters=total.parameters,
                peak_memory_bytes=total.peak_memory_bytes,
            ).to_dict(),
        },
    )
    write_card(output, card)
    console.print(
        f"w2sr generate: {records} traces for {len(job.problems)} problems in {output} "
        f"({total.samples} new, {total.resumed_samples} resumed; {total.tokens_generated} tokens, "
        f"{card['tokens_per_s'] or 0:.0f} tok/s; {total.capped_prompts} capped, "
        f"{total.skipped_prompts} skipped prompts); card: {card_path(output)}",
        highlight=False,
    )
    return card


def _layout(job: GenerateJob, world: int) -> dict[str, Any]:
    return {
        "output": str(job.output),
        "problems_total": len(job.problems),
        "num_shards": job.num_shards,
        "shard_index": job.shard_index,
        "ranks": world,
    }


def _repair(path: Path, console: Console) -> None:
    dropped = repair_torn_tail(path)
    if dropped:
        console.print(
            f"w2sr generate: dropped a torn last line ({dropped} bytes) of {path}, left by an "
            "interrupted run; its problem is generated again",
            highlight=False,
        )


def local_rank_zero() -> bool:
    """True in the process that launches ranks (or rank 0 under an external launcher such as torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def generate(trainer: Trainer, model: LightningModule, request: GenerateRequest) -> None:
    """``w2sr generate``: check everything, then stream traces from one process (vLLM: one engine over its own
    GPUs) or from each rank Lightning's launcher starts (``--trainer.devices N``, HF backend)."""
    check_not_input(request.output, {"problems": request.problems})
    problems = load_problems(
        request.problems,
        split=request.split,
        fields=request.fields,
        name=request.source_name,
        limit=request.limit,
        subset=request.subset,
    )
    rows = select_shard(problems, request.num_shards, request.shard_index)
    settings = generation_settings(
        model=model.hparams.model_name_or_path,
        adapter=model.hparams.adapter_path,
        backend=request.backend,
        prompt=request.prompt,
        sampling=request.sampling,
        quantization=getattr(model.hparams, "quantization", None),
    )
    job = GenerateJob(
        output=request.output,
        problems=rows,
        prompt=request.prompt,
        sampling=request.sampling,
        settings=settings,
        resume=request.resume,
        overwrite=request.overwrite,
        num_shards=request.num_shards,
        shard_index=request.shard_index,
        progress=trainer.progress_bar_callback is not None,
        device=trainer.strategy.root_device.type,
        devices=request.vllm.tensor_parallel_size
        if request.backend == "vllm" and trainer.strategy.root_device.type == "cuda"
        else None,
    )
    backend = request.backend
    if backend == "vllm":
        check_vllm()  # exit 2 before any model is loaded
    if local_rank_zero():
        prepare_output(job)
    launcher = trainer.strategy.launcher
    if backend == "vllm" or launcher is None or trainer.world_size == 1:  # vLLM: one engine, its own GPUs
        run_rank(job, lambda: backends.make_backend(model, backend, trainer.strategy.root_device, request.vllm))
        return

    def rank_main() -> None:
        import torch.distributed as dist

        trainer.strategy.setup_environment()  # the process group (gloo on CPU, nccl on GPUs)

        def gather(stats: GenerationStats) -> list[GenerationStats]:
            everyone: list[GenerationStats] = [stats] * trainer.world_size
            dist.all_gather_object(everyone, stats)
            return everyone

        try:
            run_rank(
                job,
                lambda: backends.make_backend(model, backend, trainer.strategy.root_device),
                rank=trainer.global_rank,
                world=trainer.world_size,
                barrier=trainer.strategy.barrier,
                gather=gather,
                other_ranks=lambda: {p.pid for p in getattr(launcher, "procs", None) or []},
            )
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    launcher.launch(rank_main, trainer=trainer)
