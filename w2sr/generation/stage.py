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
from typing import Any

from w2sr.generation import backends
from w2sr.generation.base import SamplingOptions
from w2sr.generation.card import generation_settings
from w2sr.generation.engines import check_data_parallel, run_model_jobs
from w2sr.generation.jobs import GenerateJob, prepare_output, run_rank
from w2sr.generation.vllm import VLLMOptions, check_vllm
from w2sr.records.jsonl import InputError, check_not_input
from w2sr.records.problems import FieldMap, Problem, load_problems
from w2sr.records.prompts import PromptOptions


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


def generate(
    trainer: Any,
    model: Any,
    problems: str,
    output: str,
    *,
    fields: FieldMap,
    split: str,
    subset: str | None,
    source_name: str | None,
    limit: int | None,
    prompt: PromptOptions,
    sampling: SamplingOptions,
    backend: str,
    vllm: VLLMOptions,
    num_shards: int,
    shard_index: int,
    resume: bool,
    overwrite: bool,
) -> None:
    """``w2sr generate``: check everything, then stream traces from one process (vLLM: one engine over its own
    GPUs) or from each rank Lightning's launcher starts (``--trainer.devices N``, HF backend)."""
    check_not_input(output, {"problems": problems})
    rows = select_shard(
        load_problems(problems, split=split, fields=fields, name=source_name, limit=limit, subset=subset),
        num_shards,
        shard_index,
    )
    settings = generation_settings(
        model=model.hparams.model_name_or_path,
        adapter=model.hparams.adapter_path,
        backend=backend,
        prompt=prompt,
        sampling=sampling,
        quantization=getattr(model.hparams, "quantization", None),
    )
    job = GenerateJob(
        output=output,
        problems=rows,
        prompt=prompt,
        sampling=sampling,
        settings=settings,
        resume=resume,
        overwrite=overwrite,
        num_shards=num_shards,
        shard_index=shard_index,
        progress=trainer.progress_bar_callback is not None,
    )
    if backend == "vllm":
        check_vllm()  # exit 2 before any model is loaded
    check_data_parallel(backend, vllm)
    if local_rank_zero():
        prepare_output(job)
    if backend == "vllm":  # one engine here, or --vllm.data_parallel_size engine processes, each on its own devices
        run_model_jobs([job], model, backend, trainer.strategy.root_device, vllm)
        return
    launcher = trainer.strategy.launcher
    if launcher is None or trainer.world_size == 1:
        run_rank(job, lambda: backends.make_backend(model, backend, trainer.strategy.root_device, vllm))
        return

    def rank_main() -> None:
        import torch.distributed as dist

        trainer.strategy.setup_environment()  # the process group (gloo on CPU, nccl on GPUs)

        def gather(stats: Any) -> list[Any]:
            everyone: list[Any] = [None] * trainer.world_size
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
            )
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    launcher.launch(rank_main, trainer=trainer)
