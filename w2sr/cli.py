"""The ``w2sr`` command: LightningCLI with ``fit``/``validate``/``test``/``predict`` plus ``generate``, ``verify``,
``evaluate`` and ``report``.

The extra stages are methods of :class:`W2SRTrainer`, so each gets the usual LightningCLI machinery: the ``model:``,
``data:`` and ``trainer:`` groups, stacked ``--config`` files, ``--print_config`` and dotted overrides. In
``generate`` the ``model:`` group names the teacher, in ``evaluate`` the student (base + optional adapter).
Bad input exits with code 2 and a message naming the file, line and field. Exercised by ``w2sr --help`` and
``pytest tests/cli``. Each stage method only wires its options to the package that owns the stage.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from typing import Any, Literal

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI
from rich.console import Console

from w2sr.generation import stage as generation_stage
from w2sr.generation.backends import Backend
from w2sr.generation.base import SamplingOptions
from w2sr.generation.vllm import VLLMOptions
from w2sr.records.jsonl import InputError
from w2sr.records.problems import FieldMap
from w2sr.records.prompts import PromptOptions
from w2sr.runtime.signals import Interrupted, install_signal_handlers
from w2sr.training.datamodule import TraceDataModule
from w2sr.training.module import StudentModule
from w2sr.verification.grade import VerifyOptions
from w2sr.verification.stage import verify_file


class W2SRTrainer(Trainer):
    """Lightning's Trainer plus the weak-to-strong stages that run outside the training loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from w2sr.runtime.progress import configured_callbacks, use_step_progress_bar

        configured = configured_callbacks(kwargs.get("callbacks"))  # before Lightning appends its defaults to it
        super().__init__(*args, **kwargs)
        use_step_progress_bar(self, configured)  # "Epoch 0 · step 3/50 ━━ 3/50", not "Epoch 0/-2 ━━ 3/10"

    def generate(
        self,
        model: StudentModule,
        problems: str,
        output: str,
        datamodule: Any = None,
        fields: FieldMap = FieldMap(),
        split: str = "test",
        subset: str | None = None,
        source_name: str | None = None,
        limit: int | None = None,
        prompt: PromptOptions = PromptOptions(),
        sampling: SamplingOptions = SamplingOptions(),
        backend: Backend = "hf",
        vllm: VLLMOptions = VLLMOptions(),
        num_shards: int = 1,
        shard_index: int = 0,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
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
        generation_stage.generate(
            self,
            model,
            problems,
            output,
            fields=fields,
            split=split,
            subset=subset,
            source_name=source_name,
            limit=limit,
            prompt=prompt,
            sampling=sampling,
            backend=backend,
            vllm=vllm,
            num_shards=num_shards,
            shard_index=shard_index,
            resume=resume,
            overwrite=overwrite,
        )

    def verify(
        self,
        input: str | list[str],
        output: str,
        model: Any = None,
        datamodule: Any = None,
        workers: int | None = None,
        options: VerifyOptions = VerifyOptions(),
        split: str | None = None,
        summary: str | None = None,
        overwrite: bool = False,
    ) -> None:
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

    def evaluate(
        self,
        model: StudentModule,
        output_dir: str,
        datamodule: Any = None,
        problems: str | None = None,
        benchmarks: list[str] | str | None = None,
        benchmark_dir: str | None = None,
        predictions: list[str] | str | None = None,
        benchmark_sampling: bool = False,
        n_per_benchmark: dict[str, int] | None = None,
        fields: FieldMap = FieldMap(),
        split: str = "test",
        subset: str | None = None,
        source_name: str | None = None,
        limit: int | None = None,
        prompt: PromptOptions = PromptOptions(),
        sampling: SamplingOptions = SamplingOptions(),
        options: VerifyOptions = VerifyOptions(),
        backend: Backend = "hf",
        vllm: VLLMOptions = VLLMOptions(),
        overwrite: bool = False,
    ) -> None:
        """Evaluate a model (or base + adapter) on benchmarks: generate, verify, avg@n / pass@k / maj@k with 95%
        intervals; or score completions made elsewhere (``--predictions``) without loading a model.

        Args:
            model: the model to evaluate (``--model.model_name_or_path``, ``--model.adapter_path``); a QLoRA adapter
                is evaluated on the NF4 base its ``w2sr_student.json`` names (``--model.quantization none``: on the
                bf16 base); results.json records ``quantization``.
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
        from w2sr.evaluation.stage import evaluate

        evaluate(
            model,
            self.strategy.root_device,
            output_dir,
            problems=problems,
            benchmarks=_as_list(benchmarks),
            benchmark_dir=benchmark_dir,
            predictions=_as_list(predictions),
            benchmark_sampling=benchmark_sampling,
            n_per_benchmark=n_per_benchmark,
            fields=fields,
            split=split,
            subset=subset,
            source_name=source_name,
            limit=limit,
            prompt=prompt,
            sampling=sampling,
            options=options,
            backend=backend,
            vllm=vllm,
            overwrite=overwrite,
        )

    def report(
        self,
        runs: list[str] | str,
        output_dir: str,
        model: Any = None,
        datamodule: Any = None,
        base: str | None = None,
        reference: str | None = None,
        fit_runs: list[str] | str | None = None,
        teacher: str | None = None,
        metric: str = "avg@n",
        min_gap: float = 0.01,
        allow_mismatch: bool = False,
        overwrite: bool = False,
    ) -> None:
        """Compare evaluation runs per benchmark: accuracies with intervals, gains over the base, RGR; writes
        report.md, report.json and report.png (``python -m w2sr.report`` is an alias).

        Args:
            runs: results.json files of ``w2sr evaluate`` (or their folders), optionally ``name=path``.
            output_dir: where report.md / report.json / report.png are written.
            base: the base model's run (a run name or a path).
            reference: the reference run (RL-trained or oracle student) for RGR = (acc - base) / (ref - base).
            fit_runs: fit run folders (Lightning CSVLogger metrics.csv): plot val/reasoning_acc and train/loss.
            teacher: a ``w2sr verify --summary`` JSON: report the teacher traces' accuracy too.
            metric: ``avg@n`` (pass@1 estimated from n samples), ``pass@K`` or ``maj@K``.
            min_gap: RGR is undefined when the reference gains at most this much (fraction) over the base (also
                when the paired interval of the reference's gain contains zero).
            allow_mismatch: compare runs evaluated with another grader, prompt, sampling or problem set (refused,
                exit 2, by default); the report then flags the differences loudly.
            overwrite: replace an existing report.
        """
        from w2sr.evaluation.report import make_report

        make_report(
            _as_list(runs),
            output_dir,
            base=base,
            reference=reference,
            fit_runs=_as_list(fit_runs),
            teacher=teacher,
            metric=metric,
            min_gap=min_gap,
            allow_mismatch=allow_mismatch,
            overwrite=overwrite,
        )

    def export(
        self,
        output: str,
        adapter: str | None = None,
        checkpoint: str | None = None,
        base: str | None = None,
        dtype: Literal["bfloat16", "float16", "float32"] | None = None,
        base_quantization: Literal["none", "nf4"] = "none",
        overwrite: bool = False,
        model: Any = None,
        datamodule: Any = None,
    ) -> None:
        """Write a plain Hugging Face model folder for transformers and vLLM (merged adapter or sharded checkpoint).

        Merges a LoRA/QLoRA adapter into its base loaded in bf16 (never 4-bit; ``--base_quantization nf4``: into the
        dequantized NF4 base a QLoRA adapter was trained against), or consolidates a sharded FSDP checkpoint;
        writes safetensors, config, tokenizer and w2sr_student.json atomically.

        Args:
            output: the folder to write (a new folder; an existing one only with ``--overwrite``).
            adapter: a peft adapter folder (``fit``'s export of a LoRA/QLoRA run) to merge into its base.
            checkpoint: a sharded checkpoint folder of an FSDP run (e.g. ``checkpoints/last.ckpt``) to consolidate.
            base: the base model (default: the adapter's ``base_model_name_or_path`` / the checkpoint's model).
            dtype: weight dtype of the written model (merge default bfloat16; checkpoint default: as trained).
            base_quantization: ``none`` merges into the base as stored (in ``dtype``); ``nf4`` loads the base in NF4,
                dequantizes it to ``dtype`` and merges into that: the weights a QLoRA adapter was trained against
                (CUDA + bitsandbytes).
            overwrite: replace an existing output folder.
        """
        from w2sr.training.export import run_export

        path = run_export(output, adapter, checkpoint, base, dtype, overwrite, base_quantization=base_quantization)
        Console(stderr=True).print(f"w2sr export: wrote {path}")


def _as_list(value: list[str] | str | None) -> list[str]:
    """``[a,b]``, ``"a,b"`` or ``"a"`` -> a list of names."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


class W2SRCLI(LightningCLI):
    """LightningCLI with the w2sr stages and the links between the model and data groups."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        skip = {"model", "datamodule"}
        return {
            **LightningCLI.subcommands(),
            "generate": skip,
            "verify": skip,
            "evaluate": skip,
            "report": skip,
            "export": skip,
        }

    # overrides a private LightningCLI hook (lightning 2.5-2.6; tests/layout/test_lightning_private.py guards its name)
    def _parse_ckpt_path(self) -> None:
        """Resuming with ``--ckpt_path`` restores weights, optimizer, schedulers and loop state; the configuration
        comes from the command line and config files as given (Lightning would otherwise replace every ``model.*``
        value with the checkpoint's, silently ignoring e.g. a moved base model path or ``overwrite_export``)."""

    # extends a private LightningCLI method: the only place a subcommand's parser can be reached before --help
    # prints it (lightning 2.5-2.6; tests/layout/test_lightning_private.py guards its name and signature)
    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        """``w2sr verify --help`` lists verify's options, not the trainer's ~400 lines (they are still accepted)."""
        from w2sr.runtime.quiet import hide_unused_options

        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        hide_unused_options(parser, subcommand)
        return parser

    def before_instantiate_classes(self) -> None:
        """Refuse a strategy whose library is missing (DeepSpeed is an optional extra) or that cannot run here (FSDP,
        DeepSpeed, a GPU accelerator or precision without CUDA) before anything is built;
        ``fit`` without ``trainer.default_root_dir`` runs in a fresh ``runs/fit-<time>`` folder (config.yaml, logs,
        checkpoints, export) instead of littering the current folder."""
        from w2sr.training.strategies import check_strategy_available

        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config.get("trainer", {})
        check_strategy_available(trainer.get("strategy"), trainer.get("accelerator"), trainer.get("precision"))
        if self.subcommand == "fit" and self.config.fit.trainer.get("default_root_dir") is None:
            from w2sr.runtime.run_dir import default_run_dir

            self.config.fit.trainer.default_root_dir = default_run_dir()

    def _preflight(self) -> None:
        """Option checks that need no data or weights (``w2sr.runtime.preflight``): exit 2 before any heavy work."""
        from w2sr.runtime.preflight import check_command

        check_command(self.subcommand, self.config[self.subcommand], self.model, self.datamodule)

    before_validate = before_test = before_predict = before_generate = before_verify = before_evaluate = _preflight

    def before_fit(self) -> None:
        """Before any data is tokenized or weight loaded: option checks, refuse a run whose export would replace an
        earlier one or an input, print the per-GPU memory estimate and refuse a run that clearly cannot fit
        (w2sr.training.fit_checks)."""
        from w2sr.training.fit_checks import check_export_target, memory_preflight

        self._preflight()
        check_export_target(self.trainer, self.model, self.datamodule)
        memory_preflight(self.trainer, self.model, self.datamodule)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments(
            ("model.model_name_or_path", "model.tokenizer_name_or_path"),
            "data.tokenizer",
            compute_fn=lambda model, tokenizer: tokenizer or model,
        )
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
        W2SRCLI(
            StudentModule,
            TraceDataModule,
            trainer_class=W2SRTrainer,
            args=args,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs={"description": "w2sr: weak-to-strong reasoning (generate -> verify -> fit -> evaluate)"},
        )
    except InputError as err:
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]w2sr: error:[/bold red] {escape(str(err))}", highlight=False
        )
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
