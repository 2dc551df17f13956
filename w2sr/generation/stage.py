"""``w2sr generate`` on disk: shards, ranks, engines, streaming output, resume, merge, generation card.

One process streams straight into ``--output``; with ``--trainer.devices N`` each of the N ranks (launched by
Lightning) takes every N-th problem and streams into its own part file, and rank 0 merges the parts into the output
in problem order; ``--vllm.data_parallel_size N`` does the same with N vLLM engine processes
(``w2sr.generation.engines``). The job itself (checks, shares, merge, card) is ``w2sr.generation.jobs``.
``--num_shards N --shard_index I`` keeps the problems at positions ``p % N == I`` (after ``--limit``), so shards run
on different machines can be concatenated. ``--resume true`` continues from whatever the output and part files hold;
a finished output is rewritten once, atomically, in problem order. Exercised by ``w2sr generate`` and
``pytest tests/generation/test_generate_resume.py tests/generation/test_generate_parallel.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from w2sr.generation import backends
from w2sr.generation.backends import Backend
from w2sr.generation.base import SamplingOptions
from w2sr.generation.card import GenerationStats, generation_settings
from w2sr.generation.engines import check_data_parallel, run_model_jobs
from w2sr.generation.jobs import GenerateJob, prepare_output, run_rank
from w2sr.generation.vllm import VLLMOptions, check_vllm
from w2sr.records.jsonl import InputError, check_not_input
from w2sr.records.options import document_fields
from w2sr.records.problems import FieldMap, Problem, load_problems
from w2sr.records.prompts import PromptOptions

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer


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
    """the vLLM engine: tensor_parallel_size, data_parallel_size (engines side by side), gpu_memory_utilization,
    max_model_len, dtype, enable_prefix_caching, seed, enable_lora, max_lora_rank (with ``--backend vllm``)."""
    num_shards: int = 1
    """split the problems into this many shards (e.g. one per machine or job-array task)."""
    shard_index: int = 0
    """which shard this run generates: problems at positions ``p % num_shards == shard_index``."""
    resume: bool = False
    """continue an interrupted run: keep the (id, sample) pairs the output already holds."""
    overwrite: bool = False
    """replace an existing output."""


def select_shard(problems: list[Problem], num_shards: int, shard_index: int) -> list[Problem]:
    """The problems at positions ``p % num_shards == shard_index``."""
    if num_shards < 1:
        raise InputError(f"must be at least 1, got {num_shards}", field="num_shards")
    if not 0 <= shard_index < num_shards:
        raise InputError(f"must be in [0, {num_shards}), got {shard_index}", field="shard_index")
    return problems[shard_index::num_shards]


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
    check_data_parallel(backend, request.vllm)
    if local_rank_zero():
        prepare_output(job)
    if backend == "vllm":  # one engine here, or --vllm.data_parallel_size engine processes, each on its own devices
        run_model_jobs([job], model, backend, trainer.strategy.root_device, request.vllm)
        return
    launcher = trainer.strategy.launcher
    if launcher is None or trainer.world_size == 1:
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
