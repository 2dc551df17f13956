"""Stage: ``w2sr evaluate``'s wiring: which benchmarks to run (each with its problems and sampling, all checked
before any model is loaded), score-only mode for completions made elsewhere, then :mod:`w2sr.evaluation.run`.

Exercised by ``w2sr evaluate --benchmarks [math500] --benchmark_dir ../shared/data`` and
``pytest tests/evaluation``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from w2sr.evaluation.run import EvalTask, check_outputs, run_evaluation, score_predictions
from w2sr.generation.base import SamplingOptions
from w2sr.generation.engines import check_data_parallel, run_model_jobs
from w2sr.generation.vllm import VLLMOptions, check_vllm
from w2sr.records.benchmarks import get_benchmark, load_benchmark
from w2sr.records.jsonl import InputError, check_not_input
from w2sr.records.problems import FieldMap, load_problems
from w2sr.records.prompts import PromptOptions
from w2sr.verification.grade import VerifyOptions


def evaluation_tasks(
    problems: str | None,
    benchmarks: list[str],
    benchmark_dir: str | None,
    benchmark_sampling: bool,
    n_per_benchmark: dict[str, int] | None,
    fields: FieldMap,
    split: str,
    subset: str | None,
    source_name: str | None,
    limit: int | None,
    sampling: SamplingOptions,
) -> list[EvalTask]:
    """The benchmarks to run, each with its problems and sampling, checked before any model is loaded."""
    if not problems and not benchmarks:
        raise InputError(
            "nothing to evaluate: give --problems FILE, --benchmarks [NAMES] or --predictions FILES", field="benchmarks"
        )
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
        raise InputError(
            f"n_per_benchmark names benchmarks that are not evaluated: {sorted(unknown)}", field="n_per_benchmark"
        )
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise InputError(f"a benchmark is listed twice: {names}", field="benchmarks")
    return tasks


def evaluate(
    model: Any,
    device: Any,
    output_dir: str,
    *,
    problems: str | None,
    benchmarks: list[str],
    benchmark_dir: str | None,
    predictions: list[str],
    benchmark_sampling: bool,
    n_per_benchmark: dict[str, int] | None,
    fields: FieldMap,
    split: str,
    subset: str | None,
    source_name: str | None,
    limit: int | None,
    prompt: PromptOptions,
    sampling: SamplingOptions,
    options: VerifyOptions,
    backend: str,
    vllm: VLLMOptions,
    overwrite: bool,
    resume: bool = False,
) -> None:
    """``w2sr evaluate``: score-only with ``predictions``, else generate with ``model`` on ``device`` and score."""
    inputs = {"problems": problems, **{f"predictions[{i}]": path for i, path in enumerate(predictions)}}
    for name in ("results.json", "predictions.jsonl"):
        check_not_input(f"{output_dir}/{name}", inputs, option="output_dir")
    if predictions:
        if problems or benchmarks:
            raise InputError(
                "--predictions (score-only) cannot be combined with --problems or --benchmarks", field="predictions"
            )
        score_predictions(
            predictions, output_dir, verify=options, seed=sampling.seed, benchmark=source_name, overwrite=overwrite
        )
        return
    tasks = evaluation_tasks(
        problems,
        benchmarks,
        benchmark_dir,
        benchmark_sampling,
        n_per_benchmark,
        fields,
        split,
        subset,
        source_name,
        limit,
        sampling,
    )
    check_outputs(output_dir, overwrite, resume)
    if backend == "vllm":
        check_vllm()  # exit 2 before any model is loaded
    check_data_parallel(backend, vllm)
    run_evaluation(
        None,  # the engines are built when the first sample is due (never when a resumed run has them all)
        None,
        tasks,
        output_dir,
        prompt=prompt,
        verify=options,
        model_label=model.label,
        adapter=model.hparams.adapter_path,
        backend_name=backend,
        seed=sampling.seed,
        overwrite=overwrite,
        quantization=getattr(model.hparams, "quantization", None),
        resume=resume,
        generate=lambda jobs: run_model_jobs(jobs, model, backend, device, vllm),
    )
