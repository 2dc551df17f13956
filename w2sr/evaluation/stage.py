"""Stage: ``w2sr evaluate``'s wiring: which benchmarks to run (each with its problems and sampling, all checked
before any model is loaded), score-only mode for completions made elsewhere, then :mod:`w2sr.evaluation.run`.

Exercised by ``w2sr evaluate --benchmarks [math500] --benchmark_dir ../shared/data`` and
``pytest tests/evaluation``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from w2sr.evaluation.run import EvalTask, check_outputs, run_evaluation, score_predictions
from w2sr.generation.backends import Backend
from w2sr.generation.base import SamplingOptions
from w2sr.generation.engines import check_data_parallel, run_model_jobs
from w2sr.generation.vllm import VLLMOptions, check_vllm
from w2sr.records.benchmarks import get_benchmark, load_benchmark
from w2sr.records.jsonl import InputError, check_not_input
from w2sr.records.options import as_list, document_fields
from w2sr.records.problems import FieldMap, load_problems
from w2sr.records.prompts import PromptOptions
from w2sr.verification.grade import VerifyOptions


@document_fields
@dataclass(kw_only=True)
class EvaluateRequest:
    """The options of ``w2sr evaluate`` (the ``model:`` group names the student), declared once: LightningCLI reads
    them from here (``w2sr.runtime.command_line.stage_method``). ``benchmarks`` and ``predictions`` are lists after
    construction, whichever form they were given in."""

    output_dir: str
    """where results.json and predictions.jsonl are written."""
    problems: str | None = None
    """a local .jsonl/.json/.parquet/.csv file or a ``datasets`` hub id (one benchmark)."""
    benchmarks: list[str] | str | None = None
    """registered benchmarks, e.g. ``[math500,aime24]`` (known: math500, gsm8k, aime24, aime25, amc23,
    olympiadbench, minerva_math, gpqa_diamond)."""
    benchmark_dir: str | None = None
    """read ``DIR/<name>/test.jsonl`` instead of the hub (the layout of ../shared/data)."""
    predictions: list[str] | str | None = None
    """score-only mode: JSONL files with a problem id, a completion and a gold answer (field names from
    ``options.id_field`` / ``completion_field`` / ``answer_field``); no model is loaded."""
    benchmark_sampling: bool = False
    """use each benchmark's registry sampling (temperature, top_p, n) instead of ``sampling``'s; max_new_tokens,
    seed and batch_size still come from ``sampling``."""
    n_per_benchmark: dict[str, int] | None = None
    """samples per problem for some benchmarks, e.g. ``{aime24: 32}`` (overrides n)."""
    fields: FieldMap = field(default_factory=FieldMap)
    """which input fields hold the problem, gold answer and id (``--problems`` only)."""
    split: str = "test"
    """dataset split for hub ids (``--problems`` only)."""
    subset: str | None = None
    """dataset configuration name for hub ids (``--problems`` only)."""
    source_name: str | None = None
    """the benchmark name for ``--problems`` (default: the file's folder or stem, or the hub id)."""
    limit: int | None = None
    """only the first N problems of each benchmark."""
    prompt: PromptOptions = field(default_factory=PromptOptions)
    """prompt template and overrides."""
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    """n, temperature, top_p, max_new_tokens, seed (also seeds the bootstrap and GPQA's option order),
    batch_size."""
    options: VerifyOptions = field(default_factory=VerifyOptions)
    """verification options (``grader`` preset, workers, time limit, field names)."""
    backend: Backend = "hf"
    """generation backend: ``hf``, ``vllm`` (``pip install "w2sr[vllm]"``) or ``toy``."""
    vllm: VLLMOptions = field(default_factory=VLLMOptions)
    """the vLLM engine options (with ``--backend vllm``)."""
    overwrite: bool = False
    """replace existing results."""
    resume: bool = False
    """continue an interrupted evaluation from the samples it streamed into ``<output_dir>/generations/`` (same
    model, prompt and sampling only); the results equal an uninterrupted run's."""

    def __post_init__(self) -> None:
        self.benchmarks = as_list(self.benchmarks)
        self.predictions = as_list(self.predictions)


def evaluation_tasks(request: EvaluateRequest) -> list[EvalTask]:
    """The benchmarks to run, each with its problems and sampling, checked before any model is loaded."""
    problems, sampling, n_per_benchmark = request.problems, request.sampling, request.n_per_benchmark
    if not problems and not request.benchmarks:
        raise InputError(
            "nothing to evaluate: give --problems FILE, --benchmarks [NAMES] or --predictions FILES", field="benchmarks"
        )
    entries = [get_benchmark(name) for name in request.benchmarks]  # unknown names fail before anything is loaded
    tasks = []
    if problems:
        rows = load_problems(
            problems,
            split=request.split,
            fields=request.fields,
            name=request.source_name,
            limit=request.limit,
            subset=request.subset,
        )
        name = request.source_name or rows[0].source or "problems"
        tasks.append(EvalTask(name, rows, sampling))
    for entry in entries:
        chosen = sampling
        if request.benchmark_sampling:
            chosen = dataclasses.replace(sampling, **entry.sampling_defaults())
        if n_per_benchmark and entry.name in n_per_benchmark:
            chosen = dataclasses.replace(chosen, n=int(n_per_benchmark[entry.name]))
        rows = load_benchmark(entry.name, request.benchmark_dir, limit=request.limit, seed=sampling.seed)
        tasks.append(EvalTask(entry.name, rows, chosen))
    unknown = set(n_per_benchmark or {}) - {t.name for t in tasks}
    if unknown:
        raise InputError(
            f"n_per_benchmark names benchmarks that are not evaluated: {sorted(unknown)}", field="n_per_benchmark"
        )
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise InputError(f"a benchmark is listed twice: {names}", field="benchmarks")
    return tasks


def evaluate(model: Any, device: Any, request: EvaluateRequest) -> None:
    """``w2sr evaluate``: score-only with ``predictions``, else generate with ``model`` on ``device`` and score."""
    output_dir, overwrite, options, seed = request.output_dir, request.overwrite, request.options, request.sampling.seed
    predictions = list(request.predictions or [])
    inputs = {"problems": request.problems, **{f"predictions[{i}]": path for i, path in enumerate(predictions)}}
    for name in ("results.json", "predictions.jsonl"):
        check_not_input(f"{output_dir}/{name}", inputs, option="output_dir")
    if predictions:
        if request.problems or request.benchmarks:
            raise InputError(
                "--predictions (score-only) cannot be combined with --problems or --benchmarks", field="predictions"
            )
        score_predictions(
            predictions, output_dir, verify=options, seed=seed, benchmark=request.source_name, overwrite=overwrite
        )
        return
    tasks = evaluation_tasks(request)
    check_outputs(output_dir, overwrite, request.resume)
    if request.backend == "vllm":
        check_vllm()  # exit 2 before any model is loaded
    check_data_parallel(request.backend, request.vllm)
    run_evaluation(
        None,  # the engines are built when the first sample is due (never when a resumed run has them all)
        None,
        tasks,
        output_dir,
        prompt=request.prompt,
        verify=options,
        model_label=model.label,
        adapter=model.hparams.adapter_path,
        backend_name=request.backend,
        seed=seed,
        overwrite=overwrite,
        quantization=getattr(model.hparams, "quantization", None),
        resume=request.resume,
        generate=lambda jobs: run_model_jobs(jobs, model, request.backend, device, request.vllm),
    )
