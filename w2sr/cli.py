"""The ``w2sr`` command: LightningCLI with ``fit``/``validate``/``test``/``predict`` plus ``generate``, ``verify`` and
``evaluate``.

The extra stages are methods of :class:`W2SRTrainer`, so each gets the usual LightningCLI machinery: the ``model:``,
``data:`` and ``trainer:`` groups, stacked ``--config`` files, ``--print_config`` and dotted overrides. In
``generate`` the ``model:`` group names the teacher, in ``evaluate`` the student (base + optional adapter).
Bad input exits with code 2 and a message naming the file, line and field. Exercised by ``w2sr --help`` and
``pytest tests/test_cli.py tests/test_cli_e2e.py``.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Literal

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI
from rich.console import Console

from w2sr.data import TraceDataModule
from w2sr.generation.base import SamplingOptions
from w2sr.generation.card import generation_settings
from w2sr.generation.vllm import VLLMOptions, check_vllm
from w2sr.jsonl import InputError, check_output, write_jsonl
from w2sr.model import StudentModule
from w2sr.problems import FieldMap, load_problems
from w2sr.prompts import PromptOptions
from w2sr.verify import VerifyOptions, verify_file

Backend = Literal["hf", "vllm", "toy"]


def make_backend(model: StudentModule, kind: str, device: Any,
                 vllm: VLLMOptions | None = None) -> tuple[Any, Any]:
    """``(backend, tokenizer)`` for a generation backend name (one registry line per backend)."""
    if kind == "vllm":
        from w2sr.generation.vllm import VLLMBackend

        tokenizer = model.load_tokenizer()
        return VLLMBackend.from_module(model, tokenizer, vllm or VLLMOptions()), tokenizer
    if kind == "hf":
        from w2sr.generation.hf import HFBackend

        hf_model, tokenizer = model.load_for_inference(device)
        return HFBackend(hf_model, tokenizer, name=model.label), tokenizer
    if kind == "toy":
        from w2sr.generation.toy import ToyTeacherBackend

        tokenizer = model.load_tokenizer()
        return ToyTeacherBackend(tokenizer), tokenizer
    raise InputError(f"unknown backend {kind!r}; choose one of hf, vllm, toy", field="backend")


class W2SRTrainer(Trainer):
    """Lightning's Trainer plus the weak-to-strong stages that run outside the training loop."""

    def generate(self, model: StudentModule, problems: str, output: str, datamodule: Any = None,
                 fields: FieldMap = FieldMap(), split: str = "test", subset: str | None = None,
                 source_name: str | None = None, limit: int | None = None, prompt: PromptOptions = PromptOptions(),
                 sampling: SamplingOptions = SamplingOptions(), backend: Backend = "hf",
                 vllm: VLLMOptions = VLLMOptions(), num_shards: int = 1, shard_index: int = 0, resume: bool = False,
                 overwrite: bool = False) -> None:
        """Write teacher traces: problems -> prompts -> n completions each -> traces JSONL, streamed and resumable.

        Args:
            model: the teacher (``--model.model_name_or_path``).
            problems: a local .jsonl/.json/.parquet/.csv file or a ``datasets`` hub id.
            output: the traces JSONL to write (appended problem by problem while running; ``<output>.card.json``
                describes the run).
            fields: which input fields hold the problem, gold answer and id.
            split: dataset split for hub ids.
            subset: dataset configuration name for hub ids.
            source_name: the ``source`` written into each record (default: from the file or hub id).
            limit: only the first N problems.
            prompt: prompt template and overrides.
            sampling: n, temperature, top_p, max_new_tokens, seed, batch_size.
            backend: ``hf`` (Hugging Face generate, data-parallel over ``--trainer.devices``), ``vllm`` (the vLLM
                engine; ``pip install "w2sr[vllm]"``) or ``toy`` (the embedded programmatic weak teacher).
            vllm: the vLLM engine: tensor_parallel_size, gpu_memory_utilization, max_model_len, dtype,
                enable_prefix_caching, seed, enable_lora, max_lora_rank (with ``--backend vllm``).
            num_shards: split the problems into this many shards (e.g. one per machine or job-array task).
            shard_index: which shard this run generates: problems at positions ``p % num_shards == shard_index``.
            resume: continue an interrupted run: keep the (id, sample) pairs the output already holds.
            overwrite: replace an existing output.
        """
        from w2sr.generation.stage import GenerateJob, local_rank_zero, prepare_output, run_rank, select_shard

        rows = select_shard(load_problems(problems, split=split, fields=fields, name=source_name, limit=limit,
                                          subset=subset), num_shards, shard_index)
        settings = generation_settings(model=model.hparams.model_name_or_path, adapter=model.hparams.adapter_path,
                                       backend=backend, prompt=prompt, sampling=sampling)
        job = GenerateJob(output=output, problems=rows, prompt=prompt, sampling=sampling, settings=settings,
                          resume=resume, overwrite=overwrite, num_shards=num_shards, shard_index=shard_index,
                          progress=self.progress_bar_callback is not None)
        if backend == "vllm":
            check_vllm()  # exit 2 before any model is loaded
        if local_rank_zero():
            prepare_output(job)
        launcher = self.strategy.launcher
        if backend == "vllm" or launcher is None or self.world_size == 1:  # vLLM: one engine, its own GPUs
            run_rank(job, lambda: make_backend(model, backend, self.strategy.root_device, vllm))
            return

        def rank_main() -> None:
            import torch.distributed as dist

            self.strategy.setup_environment()  # the process group (gloo on CPU, nccl on GPUs)

            def gather(stats: Any) -> list[Any]:
                everyone: list[Any] = [None] * self.world_size
                dist.all_gather_object(everyone, stats)
                return everyone

            try:
                run_rank(job, lambda: make_backend(model, backend, self.strategy.root_device), rank=self.global_rank,
                         world=self.world_size, barrier=self.strategy.barrier, gather=gather)
            finally:
                if dist.is_initialized():
                    dist.destroy_process_group()

        launcher.launch(rank_main, trainer=self)

    def verify(self, input: str | list[str], output: str, model: Any = None, datamodule: Any = None,
               workers: int | None = None, options: VerifyOptions = VerifyOptions(), split: str | None = None,
               summary: str | None = None, overwrite: bool = False) -> None:
        """Check each completion's final answer against gold; write verified traces and a summary.

        Args:
            input: traces JSONL (``w2sr generate`` output, or any JSONL with the fields named in ``options``); a
                list (``--input [a.jsonl,b.jsonl]``) reads several files, e.g. the shards of one run, in turn.
            output: verified traces JSONL to write (adds ``prediction`` and ``correct``).
            workers: grade over this many processes (shortcut for ``options.workers``).
            options: workers, time limit, extraction mode and field names.
            split: a folder: also write the W2SR / W2SR-P / W2SR-N training sets there (w2sr.jsonl, w2sr_p.jsonl,
                w2sr_n.jsonl).
            summary: also write the summary as JSON to this path.
            overwrite: replace existing outputs.
        """
        if workers is not None:
            options = dataclasses.replace(options, workers=workers)
        verify_file(input, output, options, overwrite=overwrite, split_dir=split, summary_path=summary)

    def evaluate(self, model: StudentModule, problems: str, output_dir: str, datamodule: Any = None,
                 fields: FieldMap = FieldMap(), split: str = "test", subset: str | None = None,
                 source_name: str | None = None, limit: int | None = None, prompt: PromptOptions = PromptOptions(),
                 sampling: SamplingOptions = SamplingOptions(), options: VerifyOptions = VerifyOptions(),
                 backend: Backend = "hf", vllm: VLLMOptions = VLLMOptions(), overwrite: bool = False) -> None:
        """Evaluate a model (or base + adapter) on problems: generate, verify, report accuracy.

        Args:
            model: the model to evaluate (``--model.model_name_or_path``, ``--model.adapter_path``).
            problems: a local .jsonl/.json/.parquet/.csv file or a ``datasets`` hub id.
            output_dir: where results.json and predictions.jsonl are written.
            fields: which input fields hold the problem, gold answer and id.
            split: dataset split for hub ids.
            subset: dataset configuration name for hub ids.
            source_name: the ``source`` written into each record.
            limit: only the first N problems.
            prompt: prompt template and overrides.
            sampling: n, temperature, top_p, max_new_tokens, seed, batch_size.
            options: verification options.
            backend: generation backend: ``hf``, ``vllm`` (``pip install "w2sr[vllm]"``) or ``toy``.
            vllm: the vLLM engine options (with ``--backend vllm``).
            overwrite: replace existing results.
        """
        from w2sr.evaluate import run_evaluation

        rows = load_problems(problems, split=split, fields=fields, name=source_name, limit=limit, subset=subset)
        for name in ("results.json", "predictions.jsonl"):
            check_output(f"{output_dir}/{name}", overwrite)
        if backend == "vllm":
            check_vllm()
        engine, tokenizer = make_backend(model, backend, self.strategy.root_device, vllm)
        run_evaluation(engine, tokenizer, rows, output_dir, prompt=prompt, sampling=sampling, verify=options,
                       model_label=model.label, problems_source=problems, overwrite=overwrite)


class W2SRCLI(LightningCLI):
    """LightningCLI with the w2sr stages and the links between the model and data groups."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        skip = {"model", "datamodule"}
        return {**LightningCLI.subcommands(), "generate": skip, "verify": skip, "evaluate": skip}

    def _parse_ckpt_path(self) -> None:
        """Resuming with ``--ckpt_path`` restores weights, optimizer, schedulers and loop state; the configuration
        comes from the command line and config files as given (Lightning would otherwise replace every ``model.*``
        value with the checkpoint's, silently ignoring e.g. a moved base model path or ``overwrite_export``)."""

    def before_fit(self) -> None:
        """Refuse a run whose export would replace an earlier one before any data is tokenized."""
        self.model._trainer = self.trainer
        try:
            self.model.check_export()
        finally:
            self.model._trainer = None

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments(("model.model_name_or_path", "model.tokenizer_name_or_path"), "data.tokenizer",
                              compute_fn=lambda model, tokenizer: tokenizer or model)
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")


def main(args: ArgsType = None) -> None:
    """Entry point of the ``w2sr`` console script."""
    try:
        W2SRCLI(StudentModule, TraceDataModule, trainer_class=W2SRTrainer, args=args,
                auto_configure_optimizers=False, save_config_kwargs={"overwrite": True}, seed_everything_default=0,
                parser_kwargs={"description": "w2sr: weak-to-strong reasoning (generate -> verify -> fit -> evaluate)"})
    except InputError as err:
        Console(stderr=True).print(f"[bold red]w2sr: error:[/bold red] {err}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
