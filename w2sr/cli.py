"""The ``w2sr`` command: LightningCLI with ``fit``/``validate``/``test``/``predict`` plus ``generate``, ``verify``,
``evaluate`` and ``report``.

The extra stages are methods of :class:`W2SRTrainer`, so each gets the usual LightningCLI machinery: the ``model:``,
``data:`` and ``trainer:`` groups, stacked ``--config`` files, ``--print_config`` and dotted overrides. In
``generate`` the ``model:`` group names the teacher, in ``evaluate`` the student (base + optional adapter).
Bad input exits with code 2 and a message naming the file, line and field. Exercised by ``w2sr --help`` and
``pytest tests/test_cli.py tests/test_cli_e2e.py``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from typing import Any, Literal

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI
from rich.console import Console

from w2sr.training.datamodule import TraceDataModule
from w2sr.generation.base import SamplingOptions
from w2sr.generation.card import generation_settings
from w2sr.generation.vllm import VLLMOptions, check_vllm
from w2sr.records.jsonl import InputError, check_not_input
from w2sr.training.module import StudentModule
from w2sr.records.problems import FieldMap, load_problems
from w2sr.records.prompts import PromptOptions
from w2sr.runtime.signals import Interrupted, install_signal_handlers
from w2sr.verification.grade import VerifyOptions, verify_file

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from w2sr.runtime.progress import use_step_progress_bar

        use_step_progress_bar(self, kwargs.get("callbacks"))  # "Epoch 0 · step 3/50", not "Epoch 0/-2"

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

        check_not_input(output, {"problems": problems})
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
            split: a folder: also write the W2SR / W2SR-P / W2SR-N training sets there (w2sr.records.jsonl, w2sr_p.jsonl,
                w2sr_n.jsonl).
            summary: also write the summary as JSON to this path.
            overwrite: replace existing outputs.
        """
        if workers is not None:
            options = dataclasses.replace(options, workers=workers)
        verify_file(input, output, options, overwrite=overwrite, split_dir=split, summary_path=summary)

    def evaluate(self, model: StudentModule, output_dir: str, datamodule: Any = None, problems: str | None = None,
                 benchmarks: list[str] | str | None = None, benchmark_dir: str | None = None,
                 predictions: list[str] | str | None = None, benchmark_sampling: bool = False,
                 n_per_benchmark: dict[str, int] | None = None, fields: FieldMap = FieldMap(), split: str = "test",
                 subset: str | None = None, source_name: str | None = None, limit: int | None = None,
                 prompt: PromptOptions = PromptOptions(), sampling: SamplingOptions = SamplingOptions(),
                 options: VerifyOptions = VerifyOptions(), backend: Backend = "hf",
                 vllm: VLLMOptions = VLLMOptions(), overwrite: bool = False) -> None:
        """Evaluate a model (or base + adapter) on benchmarks: generate, verify, avg@n / pass@k / maj@k with 95%
        intervals; or score completions made elsewhere (``--predictions``) without loading a model.

        Args:
            model: the model to evaluate (``--model.model_name_or_path``, ``--model.adapter_path``).
            output_dir: where results.json and predictions.jsonl are written.
            problems: a local .jsonl/.json/.parquet/.csv file or a ``datasets`` hub id (one benchmark).
            benchmarks: registered benchmarks, e.g. ``[math500,aime24]`` (known: math500, gsm8k, aime24, aime25,
                amc23, olympiadbench, minerva_math, gpqa_diamond).
            benchmark_dir: read ``DIR/<name>/test.jsonl`` instead of the hub (the layout of ../shared/data).
            predictions: score-only mode: JSONL files with a problem id, a completion and a gold answer (field
                names from ``options.id_field`` / ``completion_field`` / ``answer_field``); no model is loaded.
            benchmark_sampling: use each benchmark's registry sampling (temperature, top_p, n) instead of
                ``sampling``'s; max_new_tokens, seed and batch_size still come from ``sampling``.
            n_per_benchmark: samples per problem for some benchmarks, e.g. ``{aime24: 32}`` (overrides n).
            fields: which input fields hold the problem, gold answer and id (``--problems`` only).
            split: dataset split for hub ids (``--problems`` only).
            subset: dataset configuration name for hub ids (``--problems`` only).
            source_name: the benchmark name for ``--problems`` (default: the file's folder or stem, or the hub id).
            limit: only the first N problems of each benchmark.
            prompt: prompt template and overrides.
            sampling: n, temperature, top_p, max_new_tokens, seed (also seeds the bootstrap and GPQA's option
                order), batch_size.
            options: verification options (``grader`` preset, workers, time limit, field names).
            backend: generation backend: ``hf``, ``vllm`` (``pip install "w2sr[vllm]"``) or ``toy``.
            vllm: the vLLM engine options (with ``--backend vllm``).
            overwrite: replace existing results.
        """
        from w2sr.evaluation.run import check_outputs, score_predictions

        inputs = {"problems": problems, **{f"predictions[{i}]": path for i, path in enumerate(_as_list(predictions))}}
        for name in ("results.json", "predictions.jsonl"):
            check_not_input(f"{output_dir}/{name}", inputs, option="output_dir")
        if predictions:
            if problems or benchmarks:
                raise InputError("--predictions (score-only) cannot be combined with --problems or --benchmarks",
                                 field="predictions")
            score_predictions(_as_list(predictions), output_dir, verify=options, seed=sampling.seed,
                              benchmark=source_name, overwrite=overwrite)
            return
        tasks = evaluation_tasks(problems, _as_list(benchmarks), benchmark_dir, benchmark_sampling,
                                 n_per_benchmark, fields, split, subset, source_name, limit, sampling)
        check_outputs(output_dir, overwrite)
        if backend == "vllm":
            check_vllm()  # exit 2 before any model is loaded
        engine, tokenizer = make_backend(model, backend, self.strategy.root_device, vllm)
        from w2sr.evaluation.run import run_evaluation

        run_evaluation(engine, tokenizer, tasks, output_dir, prompt=prompt, verify=options, model_label=model.label,
                       adapter=model.hparams.adapter_path, backend_name=backend, seed=sampling.seed,
                       overwrite=overwrite)

    def report(self, runs: list[str] | str, output_dir: str, model: Any = None, datamodule: Any = None,
               base: str | None = None, reference: str | None = None, fit_runs: list[str] | str | None = None,
               teacher: str | None = None, metric: str = "avg@n", min_gap: float = 0.01,
               overwrite: bool = False) -> None:
        """Compare evaluation runs per benchmark: accuracies with intervals, gains over the base, RGR; writes
        report.md, report.json and report.png (``python -m w2sr.evaluation.report`` is an alias).

        Args:
            runs: results.json files of ``w2sr evaluate`` (or their folders), optionally ``name=path``.
            output_dir: where report.md / report.json / report.png are written.
            base: the base model's run (a run name or a path).
            reference: the reference run (RL-trained or oracle student) for RGR = (acc - base) / (ref - base).
            fit_runs: fit run folders (Lightning CSVLogger metrics.csv): plot val/reasoning_acc and train/loss.
            teacher: a ``w2sr verify --summary`` JSON: report the teacher traces' accuracy too.
            metric: ``avg@n`` (pass@1 estimated from n samples), ``pass@K`` or ``maj@K``.
            min_gap: RGR is n/a when the reference gains at most this much (fraction) over the base.
            overwrite: replace an existing report.
        """
        from w2sr.evaluation.report import make_report

        make_report(_as_list(runs), output_dir, base=base, reference=reference, fit_runs=_as_list(fit_runs),
                    teacher=teacher, metric=metric, min_gap=min_gap, overwrite=overwrite)

    def export(self, output: str, adapter: str | None = None, checkpoint: str | None = None, base: str | None = None,
               dtype: Literal["bfloat16", "float16", "float32"] | None = None, overwrite: bool = False,
               model: Any = None, datamodule: Any = None) -> None:
        """Write a plain Hugging Face model folder for transformers and vLLM (merged adapter or sharded checkpoint).

        Merges a LoRA/QLoRA adapter into its base loaded in bf16 (never 4-bit), or consolidates a sharded FSDP
        checkpoint; writes safetensors, config, tokenizer and w2sr_student.json atomically.

        Args:
            output: the folder to write (a new folder; an existing one only with ``--overwrite``).
            adapter: a peft adapter folder (``fit``'s export of a LoRA/QLoRA run) to merge into its base.
            checkpoint: a sharded checkpoint folder of an FSDP run (e.g. ``checkpoints/last.ckpt``) to consolidate.
            base: the base model (default: the adapter's ``base_model_name_or_path`` / the checkpoint's model).
            dtype: weight dtype of the written model (merge default bfloat16; checkpoint default: as trained).
            overwrite: replace an existing output folder.
        """
        from w2sr.training.export import export_checkpoint, merge_adapter

        if (adapter is None) == (checkpoint is None):
            raise InputError("give exactly one of --adapter DIR or --checkpoint DIR", field="--adapter")
        if adapter is not None:
            path = merge_adapter(adapter, output, base=base, dtype=dtype or "bfloat16", overwrite=overwrite)
        else:
            path = export_checkpoint(checkpoint, output, base=base, dtype=dtype, overwrite=overwrite)
        Console(stderr=True).print(f"w2sr export: wrote {path}")


def _as_list(value: list[str] | str | None) -> list[str]:
    """``[a,b]``, ``"a,b"`` or ``"a"`` -> a list of names."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def evaluation_tasks(problems: str | None, benchmarks: list[str], benchmark_dir: str | None,
                     benchmark_sampling: bool, n_per_benchmark: dict[str, int] | None, fields: FieldMap, split: str,
                     subset: str | None, source_name: str | None, limit: int | None,
                     sampling: SamplingOptions) -> list[Any]:
    """The benchmarks to run, each with its problems and sampling, checked before any model is loaded."""
    from w2sr.records.benchmarks import get_benchmark, load_benchmark
    from w2sr.evaluation.run import EvalTask

    if not problems and not benchmarks:
        raise InputError("nothing to evaluate: give --problems FILE, --benchmarks [NAMES] or --predictions FILES",
                         field="benchmarks")
    entries = [get_benchmark(name) for name in benchmarks]  # unknown names fail before anything is loaded
    tasks = []
    if problems:
        rows = load_problems(problems, split=split, fields=fields, name=source_name, limit=limit, subset=subset)
        name = source_name or rows[0].source or "problems"
        tasks.append(EvalTask(name, rows, sampling))
    for entry in entries:
        chosen = sampling
        if benchmark_sampling:
            chosen = dataclasses.replace(sampling, **entry.sampling_defaults())
        if n_per_benchmark and entry.name in n_per_benchmark:
            chosen = dataclasses.replace(chosen, n=int(n_per_benchmark[entry.name]))
        rows = load_benchmark(entry.name, benchmark_dir, limit=limit, seed=sampling.seed)
        tasks.append(EvalTask(entry.name, rows, chosen))
    unknown = set(n_per_benchmark or {}) - {t.name for t in tasks}
    if unknown:
        raise InputError(f"n_per_benchmark names benchmarks that are not evaluated: {sorted(unknown)}",
                         field="n_per_benchmark")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise InputError(f"a benchmark is listed twice: {names}", field="benchmarks")
    return tasks


def default_run_dir(root: str = "runs") -> str:
    """A new ``runs/fit-YYYYmmdd-HHMMSS[-N]`` folder name; ranks started by Lightning's launcher reuse rank 0's."""
    inherited = os.environ.get("W2SR_RUN_DIR")
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return inherited
    import time

    base = os.path.join(root, time.strftime("fit-%Y%m%d-%H%M%S"))
    candidate, number = base, 1
    while os.path.exists(candidate):
        candidate, number = f"{base}-{number}", number + 1
    os.environ["W2SR_RUN_DIR"] = candidate
    Console(stderr=True).print(f"w2sr fit: no trainer.default_root_dir given; this run's folder is {candidate}",
                               highlight=False, soft_wrap=True)
    return candidate


class W2SRCLI(LightningCLI):
    """LightningCLI with the w2sr stages and the links between the model and data groups."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        skip = {"model", "datamodule"}
        return {**LightningCLI.subcommands(), "generate": skip, "verify": skip, "evaluate": skip,
                "report": skip, "export": skip}

    def _parse_ckpt_path(self) -> None:
        """Resuming with ``--ckpt_path`` restores weights, optimizer, schedulers and loop state; the configuration
        comes from the command line and config files as given (Lightning would otherwise replace every ``model.*``
        value with the checkpoint's, silently ignoring e.g. a moved base model path or ``overwrite_export``)."""

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        """``w2sr verify --help`` lists verify's options, not the trainer's ~400 lines (they are still accepted)."""
        from w2sr.runtime.quiet import hide_unused_options

        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        hide_unused_options(parser, subcommand)
        return parser

    def before_instantiate_classes(self) -> None:
        """Refuse a strategy whose library is missing (DeepSpeed is an optional extra) before anything is built;
        ``fit`` without ``trainer.default_root_dir`` runs in a fresh ``runs/fit-<time>`` folder (config.yaml, logs,
        checkpoints, export) instead of littering the current folder."""
        from w2sr.training.strategies import check_strategy_available

        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        check_strategy_available(config.get("trainer", {}).get("strategy"))
        if self.subcommand == "fit" and self.config.fit.trainer.get("default_root_dir") is None:
            self.config.fit.trainer.default_root_dir = default_run_dir()

    def _preflight(self) -> None:
        """Option checks that need no data or weights (``w2sr.runtime.preflight``): exit 2 before any heavy work."""
        from w2sr.runtime.preflight import check_command

        check_command(self.subcommand, self.config[self.subcommand], self.model, self.datamodule)

    before_validate = before_test = before_predict = before_generate = before_verify = before_evaluate = _preflight

    def before_fit(self) -> None:
        """Before any data is tokenized or weight loaded: option checks, refuse a run whose export would replace an
        earlier one or an input, print the per-GPU memory estimate and refuse a run that clearly cannot fit
        (w2sr.training.memory)."""
        self._preflight()
        self.model._trainer = self.trainer
        try:
            hp, data = self.model.hparams, self.datamodule.hparams if self.datamodule is not None else {}
            inputs = {f"model.{k}": hp.get(k) for k in ("model_name_or_path", "tokenizer_name_or_path", "adapter_path")}
            inputs.update({f"data.{k}": data.get(k) for k in ("train_file", "val_file", "test_file", "predict_file")})
            check_not_input(self.model.export_path(), inputs, folder=True, option="model.export_dir")
            self.model.check_export()
        finally:
            self.model._trainer = None
        self._memory_preflight()

    def _memory_preflight(self) -> None:
        import os

        import torch
        from lightning.pytorch.accelerators import CUDAAccelerator
        from lightning.pytorch.utilities import rank_zero_info

        from w2sr.training.memory import preflight

        trainer, data = self.trainer, getattr(self.datamodule, "hparams", {})
        on_cuda = isinstance(trainer.accelerator, CUDAAccelerator) and torch.cuda.is_available()
        capacity = torch.cuda.get_device_properties(trainer.strategy.root_device).total_memory if on_cuda else None
        world = trainer.num_devices * trainer.num_nodes
        hybrid = "HYBRID" in str(getattr(trainer.strategy, "sharding_strategy", ""))
        line, refusal = preflight(self.model.hparams, int(data.get("batch_size", 1)),
                                  int(data.get("max_seq_length", 4096)), trainer.strategy, world, capacity,
                                  shard_group=trainer.num_devices if hybrid else world)
        if line:
            rank_zero_info(f"w2sr: {line}")
        if refusal and not os.environ.get("W2SR_SKIP_MEMORY_CHECK"):
            raise InputError(refusal, field="trainer.strategy")

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments(("model.model_name_or_path", "model.tokenizer_name_or_path"), "data.tokenizer",
                              compute_fn=lambda model, tokenizer: tokenizer or model)
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")


LIST_OPTIONS = ("--predictions", "--runs", "--fit_runs")  # options that take several space-separated values


def gather_lists(argv: list[str]) -> list[str]:
    """``--predictions a.jsonl b.jsonl`` -> ``--predictions [a.jsonl,b.jsonl]`` (jsonargparse wants one value)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in LIST_OPTIONS:
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                values.append(argv[i + 1])
                i += 1
            if len(values) == 1:
                out.append(values[0])
            elif values:
                out.append("[" + ",".join(values) + "]")
        i += 1
    return out


def main(args: ArgsType = None) -> None:
    """Entry point of the ``w2sr`` console script."""
    from w2sr.runtime.quiet import silence_third_party_noise

    if args is None:
        sys.argv[1:] = gather_lists(sys.argv[1:])
    elif isinstance(args, list):
        args = gather_lists([str(a) for a in args])
    silence_third_party_noise()
    previous = install_signal_handlers()
    try:
        W2SRCLI(StudentModule, TraceDataModule, trainer_class=W2SRTrainer, args=args,
                auto_configure_optimizers=False, save_config_kwargs={"overwrite": True}, seed_everything_default=0,
                parser_kwargs={"description": "w2sr: weak-to-strong reasoning (generate -> verify -> fit -> evaluate)"})
    except InputError as err:
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(f"[bold red]w2sr: error:[/bold red] {escape(str(err))}",
                                                   highlight=False)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, Interrupted) else int(signal.SIGINT)
        name = signal.Signals(signum).name
        print(f"\nw2sr: stopped by {name}; unfinished outputs were not written", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    main()
