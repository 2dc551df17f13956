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
import sys
from typing import Any, Literal

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI
from rich.console import Console

from w2sr.data import TraceDataModule
from w2sr.generation.base import SamplingOptions
from w2sr.jsonl import InputError, check_output, write_jsonl
from w2sr.model import StudentModule
from w2sr.problems import FieldMap, load_problems
from w2sr.prompts import PromptOptions
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

    def evaluate(self, model: StudentModule, output_dir: str, datamodule: Any = None, problems: str | None = None,
                 benchmarks: list[str] | str | None = None, benchmark_dir: str | None = None,
                 predictions: list[str] | str | None = None, benchmark_sampling: bool = False,
                 n_per_benchmark: dict[str, int] | None = None, fields: FieldMap = FieldMap(), split: str = "test",
                 subset: str | None = None, source_name: str | None = None, limit: int | None = None,
                 prompt: PromptOptions = PromptOptions(), sampling: SamplingOptions = SamplingOptions(),
                 options: VerifyOptions = VerifyOptions(), backend: Backend = "hf", overwrite: bool = False) -> None:
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
            backend: generation backend.
            overwrite: replace existing results.
        """
        from w2sr.evaluate import check_outputs, score_predictions

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
        engine, tokenizer = make_backend(model, backend, self.strategy.root_device)
        from w2sr.evaluate import run_evaluation

        run_evaluation(engine, tokenizer, tasks, output_dir, prompt=prompt, verify=options, model_label=model.label,
                       adapter=model.hparams.adapter_path, backend_name=backend, seed=sampling.seed,
                       overwrite=overwrite)

    def report(self, runs: list[str] | str, output_dir: str, model: Any = None, datamodule: Any = None,
               base: str | None = None, reference: str | None = None, fit_runs: list[str] | str | None = None,
               teacher: str | None = None, metric: str = "avg@n", min_gap: float = 0.01,
               overwrite: bool = False) -> None:
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
            min_gap: RGR is n/a when the reference gains at most this much (fraction) over the base.
            overwrite: replace an existing report.
        """
        from w2sr.report import make_report

        make_report(_as_list(runs), output_dir, base=base, reference=reference, fit_runs=_as_list(fit_runs),
                    teacher=teacher, metric=metric, min_gap=min_gap, overwrite=overwrite)


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
    from w2sr.benchmarks import get_benchmark, load_benchmark
    from w2sr.evaluate import EvalTask

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


class W2SRCLI(LightningCLI):
    """LightningCLI with the w2sr stages and the links between the model and data groups."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        skip = {"model", "datamodule"}
        return {**LightningCLI.subcommands(), "generate": skip, "verify": skip, "evaluate": skip,
                "report": skip}

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
    if args is None:
        sys.argv[1:] = gather_lists(sys.argv[1:])
    elif isinstance(args, list):
        args = gather_lists([str(a) for a in args])
    try:
        W2SRCLI(StudentModule, TraceDataModule, trainer_class=W2SRTrainer, args=args,
                auto_configure_optimizers=False, save_config_kwargs={"overwrite": True}, seed_everything_default=0,
                parser_kwargs={"description": "w2sr: weak-to-strong reasoning (generate -> verify -> fit -> evaluate)"})
    except InputError as err:
        Console(stderr=True).print(f"[bold red]w2sr: error:[/bold red] {err}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
