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
import os
import signal
import sys
from typing import Any, Literal

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI
from rich.console import Console

from w2sr.data import TraceDataModule
from w2sr.generation.base import SamplingOptions
from w2sr.jsonl import InputError, check_not_input, check_output, write_jsonl
from w2sr.model import StudentModule
from w2sr.problems import FieldMap, load_problems
from w2sr.prompts import PromptOptions
from w2sr.signals import Interrupted, install_signal_handlers
from w2sr.verify import VerifyOptions, verify_file

Backend = Literal["hf", "toy"]


def make_backend(model: StudentModule, kind: str, device: Any) -> tuple[Any, Any]:
    """``(backend, tokenizer)`` for a generation backend name (one registry line per backend)."""
    if kind == "hf":
        from w2sr.generation.hf import HFBackend

        hf_model, tokenizer = model.load_for_inference(device)
        return HFBackend(hf_model, tokenizer, name=model.label), tokenizer
    if kind == "toy":
        from w2sr.generation.toy import ToyTeacherBackend

        tokenizer = model.load_tokenizer()
        return ToyTeacherBackend(tokenizer), tokenizer
    raise InputError(f"unknown backend {kind!r}; choose one of hf, toy", field="backend")


class W2SRTrainer(Trainer):
    """Lightning's Trainer plus the weak-to-strong stages that run outside the training loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from w2sr.progress import use_step_progress_bar

        use_step_progress_bar(self, kwargs.get("callbacks"))  # "Epoch 0 · step 3/50", not "Epoch 0/-2"

    def generate(self, model: StudentModule, problems: str, output: str, datamodule: Any = None,
                 fields: FieldMap = FieldMap(), split: str = "test", subset: str | None = None,
                 source_name: str | None = None, limit: int | None = None, prompt: PromptOptions = PromptOptions(),
                 sampling: SamplingOptions = SamplingOptions(), backend: Backend = "hf",
                 overwrite: bool = False) -> None:
        """Write teacher traces: problems -> prompts -> n completions each -> traces JSONL.

        Args:
            model: the teacher (``--model.model_name_or_path``).
            problems: a local .jsonl/.json/.parquet/.csv file or a ``datasets`` hub id.
            output: the traces JSONL to write.
            fields: which input fields hold the problem, gold answer and id.
            split: dataset split for hub ids.
            subset: dataset configuration name for hub ids.
            source_name: the ``source`` written into each record (default: from the file or hub id).
            limit: only the first N problems.
            prompt: prompt template and overrides.
            sampling: n, temperature, top_p, max_new_tokens, seed, batch_size.
            backend: ``hf`` (Hugging Face generate) or ``toy`` (the embedded programmatic weak teacher).
            overwrite: replace an existing output.
        """
        from w2sr.generation.run import generate_traces

        check_not_input(output, {"problems": problems})
        check_output(output, overwrite)
        rows = load_problems(problems, split=split, fields=fields, name=source_name, limit=limit, subset=subset)
        engine, tokenizer = make_backend(model, backend, self.strategy.root_device)
        traces = generate_traces(engine, rows, tokenizer, prompt, sampling)
        count = write_jsonl(output, (t.to_dict() for t in traces), overwrite=overwrite)
        Console(stderr=True).print(f"w2sr generate: wrote {count} traces for {len(rows)} problems to {output}")

    def verify(self, input: str, output: str, model: Any = None, datamodule: Any = None,
               workers: int | None = None, options: VerifyOptions = VerifyOptions(), split: str | None = None,
               summary: str | None = None, overwrite: bool = False) -> None:
        """Check each completion's final answer against gold; write verified traces and a summary.

        Args:
            input: traces JSONL (``w2sr generate`` output, or any JSONL with the fields named in ``options``).
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
                 backend: Backend = "hf", overwrite: bool = False) -> None:
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
            backend: generation backend.
            overwrite: replace existing results.
        """
        from w2sr.evaluate import run_evaluation

        for name in ("results.json", "predictions.jsonl"):
            check_not_input(f"{output_dir}/{name}", {"problems": problems}, option="output_dir")
        rows = load_problems(problems, split=split, fields=fields, name=source_name, limit=limit, subset=subset)
        for name in ("results.json", "predictions.jsonl"):
            check_output(f"{output_dir}/{name}", overwrite)
        engine, tokenizer = make_backend(model, backend, self.strategy.root_device)
        run_evaluation(engine, tokenizer, rows, output_dir, prompt=prompt, sampling=sampling, verify=options,
                       model_label=model.label, problems_source=problems, overwrite=overwrite)


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
        return {**LightningCLI.subcommands(), "generate": skip, "verify": skip, "evaluate": skip}

    def _parse_ckpt_path(self) -> None:
        """Resuming with ``--ckpt_path`` restores weights, optimizer, schedulers and loop state; the configuration
        comes from the command line and config files as given (Lightning would otherwise replace every ``model.*``
        value with the checkpoint's, silently ignoring e.g. a moved base model path or ``overwrite_export``)."""

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        """``w2sr verify --help`` lists verify's options, not the trainer's ~400 lines (they are still accepted)."""
        from w2sr.quiet import hide_unused_options

        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        hide_unused_options(parser, subcommand)
        return parser

    def before_instantiate_classes(self) -> None:
        """``fit`` without ``trainer.default_root_dir`` runs in a fresh ``runs/fit-<time>`` folder (config.yaml,
        logs, checkpoints, export) instead of littering the current folder."""
        if self.subcommand == "fit" and self.config.fit.trainer.get("default_root_dir") is None:
            self.config.fit.trainer.default_root_dir = default_run_dir()

    def _preflight(self) -> None:
        """Option checks that need no data or weights (``w2sr.preflight``): exit 2 before any heavy work."""
        from w2sr.preflight import check_command

        check_command(self.subcommand, self.config[self.subcommand], self.model, self.datamodule)

    before_validate = before_test = before_predict = before_generate = before_verify = before_evaluate = _preflight

    def before_fit(self) -> None:
        """Refuse a run whose export would replace an earlier one before any data is tokenized."""
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

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments(("model.model_name_or_path", "model.tokenizer_name_or_path"), "data.tokenizer",
                              compute_fn=lambda model, tokenizer: tokenizer or model)
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")


def main(args: ArgsType = None) -> None:
    """Entry point of the ``w2sr`` console script."""
    from w2sr.quiet import silence_third_party_noise

    silence_third_party_noise()
    previous = install_signal_handlers()
    try:
        W2SRCLI(StudentModule, TraceDataModule, trainer_class=W2SRTrainer, args=args,
                auto_configure_optimizers=False, save_config_kwargs={"overwrite": True}, seed_everything_default=0,
                parser_kwargs={"description": "w2sr: weak-to-strong reasoning (generate -> verify -> fit -> evaluate)"})
    except InputError as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]w2sr: error:[/bold red] {err}", highlight=False)
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
