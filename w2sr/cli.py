"""The ``w2sr`` command: LightningCLI with ``fit``/``validate``/``test``/``predict`` plus ``generate``, ``verify``,
``decontaminate``, ``evaluate``, ``report``, ``export`` and ``convert-gguf``.

The extra stages are methods of :class:`W2SRTrainer`, so each gets the usual LightningCLI machinery: the ``model:``,
``data:`` and ``trainer:`` groups, stacked ``--config`` files, ``--print_config`` and dotted overrides. In
``generate`` the ``model:`` group names the teacher, in ``evaluate`` the student (base + optional adapter). In ``fit``
(and ``validate`` / ``test`` / ``predict``) ``model:`` and ``data:`` may name their class: the SFT student and traces
by default, ``w2sr.rl.GRPOStudent`` with ``w2sr.rl.ProblemDataModule`` for the RL arm
(``w2sr fit --config lightning_configs/quickstart/rl.yaml``).
Bad input exits with code 2 and a message naming the file, line and field. Exercised by ``w2sr --help`` and
``pytest tests/cli``. Each stage method only wires its options to the package that owns the stage.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI
from rich.console import Console

from w2sr.evaluation import report as evaluation_report
from w2sr.evaluation import stage as evaluation_stage
from w2sr.generation import stage as generation_stage
from w2sr.records import decontaminate as decontamination
from w2sr.records.jsonl import InputError
from w2sr.runtime.command_line import LIST_OPTIONS, gather_lists, stage_method
from w2sr.runtime.signals import Interrupted, install_signal_handlers
from w2sr.training import export as training_export
from w2sr.training import gguf as training_gguf
from w2sr.training.datamodule import TraceDataModule
from w2sr.training.module import StudentModule
from w2sr.verification import stage as verification_stage

__all__ = ["LIST_OPTIONS", "W2SRCLI", "W2SRTrainer", "gather_lists", "main"]


class W2SRTrainer(Trainer):
    """Lightning's Trainer plus the weak-to-strong stages that run outside the training loop.

    Each stage method takes the ``model:`` group's module and the stage's request dataclass, whose fields are the
    stage's options (``@stage_method`` makes LightningCLI read them from the dataclass), and hands both to the package
    that owns the stage.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from w2sr.runtime.progress import configured_callbacks, use_step_progress_bar
        from w2sr.training.checkpoints import keep_last_checkpoint

        configured = configured_callbacks(kwargs.get("callbacks"))  # before Lightning appends its defaults to it
        super().__init__(*args, **kwargs)
        use_step_progress_bar(self, configured)  # "Epoch 0 · step 3/50 ━━ 3/50", not "Epoch 0/-2 ━━ 3/10"
        keep_last_checkpoint(self, configured)  # <default_root_dir>/checkpoints/last.ckpt, for --ckpt_path last

    def fit(
        self,
        model: Any,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        ckpt_path: Any = None,
        weights_only: bool | None = None,
    ) -> None:
        from w2sr.runtime.run_dir import no_leftovers_of_a_refused_fit
        from w2sr.training.checkpoints import resolve_ckpt_path

        ckpt_path = resolve_ckpt_path(self, ckpt_path)  # "last": the newest last.ckpt, or exit 2 saying where it looked
        with no_leftovers_of_a_refused_fit(self):
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only=weights_only)

    fit.__doc__ = Trainer.fit.__doc__  # the options' help of `w2sr fit` (ckpt_path ...) stays Lightning's

    @stage_method(generation_stage.GenerateRequest)
    def generate(self, model: StudentModule, request: generation_stage.GenerateRequest) -> None:
        """Write teacher traces: problems -> prompts -> n completions each -> traces JSONL, streamed and resumable.

        The ``model:`` group names the teacher (``--model.model_name_or_path``).
        """
        generation_stage.generate(self, model, request)

    @stage_method(verification_stage.VerifyRequest)
    def verify(self, model: StudentModule | None, request: verification_stage.VerifyRequest) -> None:
        """Check each completion's final answer against gold; write verified traces and a summary."""
        verification_stage.verify(request)

    @stage_method(decontamination.DecontaminateRequest)
    def decontaminate(self, model: StudentModule | None, request: decontamination.DecontaminateRequest) -> None:
        """Drop the training problems (or traces) a benchmark holds; write the kept ones and a report.

        A problem is dropped when it equals a benchmark problem after normalisation, shares ``--ngram`` words in a
        row with one, or (``--similarity``) is a reworded variant of one."""
        decontamination.decontaminate(request)

    @stage_method(evaluation_stage.EvaluateRequest)
    def evaluate(self, model: StudentModule, request: evaluation_stage.EvaluateRequest) -> None:
        """Evaluate a model (or base + adapter) on benchmarks: generate, verify, avg@n / pass@k / maj@k with 95%
        intervals; or score completions made elsewhere (``--predictions``) without loading a model.

        The ``model:`` group names the model to evaluate (``--model.model_name_or_path``, ``--model.adapter_path``); a
        QLoRA adapter is evaluated on the NF4 base its ``w2sr_student.json`` names (``--model.quantization none``: on
        the bf16 base); results.json records ``quantization``.
        """
        evaluation_stage.evaluate(model, self.strategy.root_device, request)

    @stage_method(evaluation_report.ReportRequest)
    def report(self, model: StudentModule | None, request: evaluation_report.ReportRequest) -> None:
        """Compare evaluation runs per benchmark: accuracies with intervals, gains over the base, RGR; writes
        report.md, report.json and report.png (``python -m w2sr.report`` is an alias)."""
        evaluation_report.write_report(request)

    @stage_method(training_export.ExportRequest)
    def export(self, model: StudentModule | None, request: training_export.ExportRequest) -> None:
        """Write a plain Hugging Face model folder for transformers and vLLM (merged adapter or sharded checkpoint).

        Merges a LoRA/QLoRA adapter into its base loaded in the dtype the student was trained in (its card's
        ``dtype``; ``--dtype`` overrides; never 4-bit; ``--base_quantization nf4``: into the dequantized NF4 base a
        QLoRA adapter was trained against), or consolidates a sharded FSDP checkpoint; writes safetensors, config,
        tokenizer and w2sr_student.json atomically.
        """
        path = training_export.run_export(request)
        Console(stderr=True).print(f"w2sr export: wrote {path}")

    @stage_method(training_gguf.ConvertRequest)
    def convert_gguf(self, model: StudentModule | None, request: training_gguf.ConvertRequest) -> None:
        """Turn a GGUF model file (llama.cpp's format) into a Hugging Face folder every stage loads, offline."""
        path = training_gguf.convert_gguf(request.gguf, request.output, request.dtype, request.overwrite)
        Console(stderr=True).print(f"w2sr convert-gguf: wrote {path}")


setattr(W2SRTrainer, "convert-gguf", W2SRTrainer.convert_gguf)  # LightningCLI looks stages up by their name


TRAINING_STAGES = ("fit", "validate", "test", "predict")  # model: / data: in subclass mode (class_path optional)
DEFAULT_MODEL = "w2sr.training.module.StudentModule"
DEFAULT_DATA = "w2sr.training.datamodule.TraceDataModule"


class W2SRCLI(LightningCLI):
    """LightningCLI with the w2sr stages and the links between the model and data groups."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        skip = {"model", "datamodule"}
        return {
            **LightningCLI.subcommands(),
            "generate": skip,
            "verify": skip,
            "decontaminate": skip,
            "evaluate": skip,
            "report": skip,
            "export": skip,
            "convert-gguf": skip,
        }

    def parse_arguments(self, parser: Any, args: ArgsType) -> None:
        """Every unknown option name (command line and ``--config`` files) at once with the closest valid one, and
        no usage dump (``w2sr.runtime.config_check``); exit 2."""
        from jsonargparse import Namespace

        from w2sr.runtime.config_check import parse_or_explain

        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
        else:
            classes = {"model": DEFAULT_MODEL, "data": DEFAULT_DATA}
            argv = sys.argv[1:] if args is None else [str(a) for a in args]
            self.config = parse_or_explain(parser, argv, {stage: classes for stage in TRAINING_STAGES})

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

        self._building = subcommand  # read by add_core_arguments_to_parser / add_arguments_to_parser
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        hide_unused_options(parser, subcommand)
        return parser

    def before_instantiate_classes(self) -> None:
        """Refuse a strategy whose library is missing (DeepSpeed is an optional extra) or that cannot run here (FSDP,
        DeepSpeed, a GPU accelerator or precision without CUDA) before anything is built;
        ``fit`` without ``trainer.default_root_dir`` runs in a fresh ``runs/fit-<time>`` folder (config.yaml, logs,
        checkpoints, export) instead of littering the current folder; Lightning's accelerator banner only where a
        training loop runs."""
        from w2sr.runtime.quiet import hide_accelerator_banner
        from w2sr.training.strategies import check_strategy_available

        hide_accelerator_banner(self.subcommand)  # no "GPU available / TPU available" where no training loop runs
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
        from w2sr.training.fit_checks import check_export_target, check_gradient_accumulation, memory_preflight

        self._preflight()
        check_gradient_accumulation(self.trainer)
        check_export_target(self.trainer, self.model, self.datamodule)
        memory_preflight(self.trainer, self.model, self.datamodule)

    # overrides a LightningCLI method and sets a private field it reads (``_datamodule_class``; lightning 2.5-2.6:
    # tests/layout/test_lightning_private.py guards it)
    def add_core_arguments_to_parser(self, parser: Any) -> None:
        """``fit`` / ``validate`` / ``test`` / ``predict``: ``model:`` and ``data:`` in subclass mode, defaulting to
        the SFT student and traces (flat keys configure those: every SFT config), any ``class_path`` for another, e.g.
        ``w2sr.rl.GRPOStudent`` with ``w2sr.rl.ProblemDataModule``. The other stages keep ``StudentModule``'s flat
        options (``--model.model_name_or_path`` in their ``--help``)."""
        training = getattr(self, "_building", None) in TRAINING_STAGES
        saved = self.subclass_mode_model, self.subclass_mode_data, self._datamodule_class
        if not training:
            self.subclass_mode_model = self.subclass_mode_data = False
            self._datamodule_class = TraceDataModule
        try:
            super().add_core_arguments_to_parser(parser)
        finally:
            self.subclass_mode_model, self.subclass_mode_data, self._datamodule_class = saved

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Both data modules take the model's tokenizer (``init_args.`` in the training stages' subclass mode)."""
        prefix = ""
        if getattr(self, "_building", None) in TRAINING_STAGES:
            prefix = "init_args."
            parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})
        parser.link_arguments(
            (f"model.{prefix}model_name_or_path", f"model.{prefix}tokenizer_name_or_path"),
            f"data.{prefix}tokenizer",
            compute_fn=lambda model, tokenizer: tokenizer or model,
        )
        parser.link_arguments(f"model.{prefix}trust_remote_code", f"data.{prefix}trust_remote_code")


def input_error_in(err: BaseException) -> InputError | None:
    """The :class:`InputError` behind ``err``: jsonargparse wraps one raised while it builds a ``class_path`` group
    (``fit``'s ``model:`` / ``data:``, e.g. ``--model.lora.r 0``) in a ValueError of its own."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, InputError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(args: ArgsType = None) -> None:
    """Entry point of the ``w2sr`` console script."""
    from w2sr.runtime.quiet import full_width_when_not_a_terminal, silence_third_party_noise

    if args is None:
        sys.argv[1:] = gather_lists(sys.argv[1:])
    elif isinstance(args, list):
        args = gather_lists([str(a) for a in args])
    silence_third_party_noise()
    previous = install_signal_handlers()
    try:
        with full_width_when_not_a_terminal():  # Slurm logs: rich tables and lines not cut at 80 columns
            W2SRCLI(
                StudentModule,
                LightningDataModule,  # fit: any data module; TraceDataModule by default (add_core_arguments_to_parser)
                subclass_mode_model=True,
                subclass_mode_data=True,
                trainer_class=W2SRTrainer,
                args=args,
                auto_configure_optimizers=False,
                save_config_kwargs={"overwrite": True},
                seed_everything_default=0,
                parser_kwargs={
                    "description": "w2sr: weak-to-strong reasoning (generate -> verify -> fit -> evaluate)",
                    "allow_abbrev": False,  # `--sampling.max_new_token` is a mistake, not an abbreviation
                },
            )
    except (InputError, ValueError) as err:
        cause = input_error_in(err)
        if cause is None:
            raise
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]w2sr: error:[/bold red] {escape(str(cause))}", highlight=False
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
