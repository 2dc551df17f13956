"""The generation stage in memory: problems -> prompts -> guarded requests -> completions -> trace records.

:func:`stream_traces` yields each problem's traces as soon as its samples are done (the CLI stage in
``w2sr.generation.stage`` appends them to the output at once); :func:`generate_traces` collects them in problem
order (``w2sr evaluate`` uses it). Guards: a prompt that fills the model's context is skipped and counted, never a
crash mid-run; every other request's new tokens are capped at the context minus its prompt (counted as capped).
Progress (rich): problems done, tokens/s and ETA, for every backend. Exercised by
``w2sr generate --model.model_name_or_path TEACHER --problems FILE --output traces.jsonl`` and
``pytest tests/generation/test_generation.py tests/generation/test_generation_guards.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from w2sr.generation.base import GenerationBackend, GenerationRequest, SamplingOptions, stream_completions
from w2sr.generation.card import GenerationStats
from w2sr.records.problems import Problem
from w2sr.records.prompts import PromptOptions, build_messages, render_prompt
from w2sr.records.traces import Trace

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def build_requests(
    problems: list[Problem], tokenizer: PreTrainedTokenizerBase, prompt: PromptOptions
) -> list[GenerationRequest]:
    """Chat messages and rendered prompt text for each problem."""
    requests = []
    for problem in problems:
        messages = build_messages(problem.problem, prompt)
        requests.append(
            GenerationRequest(
                problem=problem, messages=messages, text=render_prompt(tokenizer, messages, prompt.use_chat_template)
            )
        )
    return requests


def apply_guards(
    requests: list[GenerationRequest],
    tokenizer: PreTrainedTokenizerBase,
    sampling: SamplingOptions,
    context_length: int | None,
    stats: GenerationStats,
) -> list[GenerationRequest]:
    """Tokenize the prompts (``prompt_ids``); drop those with no room for one new token (``skipped_prompts``) and
    cap the others' new tokens at ``context_length - prompt`` (``capped_prompts``)."""
    if not requests:
        return []
    ids = tokenizer([r.text for r in requests], add_special_tokens=False)["input_ids"]
    kept = []
    for request, prompt_ids in zip(requests, ids):
        request.prompt_ids = list(prompt_ids)
        if context_length is not None:
            room = context_length - len(prompt_ids)
            if room < 1:
                stats.skipped_prompts += 1
                stats.skipped_ids.append(request.problem.id)
                continue
            if room < request.new_tokens(sampling):
                request.max_new_tokens = room
                stats.capped_prompts += 1
        kept.append(request)
    return kept


def generation_progress(enabled: bool, console: Console | None = None) -> Progress:
    """A rich progress bar: problems done / total, tokens/s and ETA."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("problems"),
        TextColumn("{task.fields[tps]:>8.1f} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
        console=console or Console(stderr=True),
    )


def stream_traces(
    backend: GenerationBackend,
    problems: list[Problem],
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptOptions,
    sampling: SamplingOptions,
    *,
    done: set[tuple[str, int]] | None = None,
    stats: GenerationStats | None = None,
    progress: bool = False,
    context_length: int | None = None,
) -> Iterator[list[Trace]]:
    """Each problem's new traces (ordered by sample) as soon as they are done; ``(id, sample)`` pairs in ``done``
    are not generated again. ``stats`` (when given) is filled in as the run goes."""
    stats = stats if stats is not None else GenerationStats()
    done = done or set()
    requests = []
    for request in build_requests(problems, tokenizer, prompt):
        todo = [s for s in range(sampling.n) if (request.problem.id, s) not in done]
        stats.resumed_samples += sampling.n - len(todo)
        if todo:
            request.samples = todo
            requests.append(request)
    context = context_length if context_length is not None else getattr(backend, "context_length", None)
    requests = apply_guards(requests, tokenizer, sampling, context, stats)
    started = time.perf_counter()
    with generation_progress(progress) as bar:
        task = bar.add_task(f"generating with {backend.name}", total=len(requests), tps=0.0)
        for index, completions in stream_completions(backend, requests, sampling):
            request = requests[index]
            samples = request.sample_indices(sampling)
            if len(completions) != len(samples):
                raise RuntimeError(
                    f"backend {backend.name!r} returned {len(completions)} completions for "
                    f"{len(samples)} samples of problem {request.problem.id!r}"
                )
            traces = [
                Trace(
                    problem=request.problem,
                    sample=s,
                    teacher=backend.name,
                    prompt=request.messages,
                    completion=c.text,
                    finish_reason=c.finish_reason,
                    completion_tokens=c.tokens,
                )
                for s, c in zip(samples, completions)
            ]
            stats.problems += 1
            stats.samples += len(traces)
            stats.tokens_generated += sum(c.tokens for c in completions)
            stats.truncated += sum(c.finish_reason == "length" for c in completions)
            stats.generation_s = time.perf_counter() - started
            bar.update(task, advance=1, tps=stats.tokens_generated / max(stats.generation_s, 1e-9))
            yield traces
    stats.generation_s = time.perf_counter() - started


def generate_traces(
    backend: GenerationBackend,
    problems: list[Problem],
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptOptions,
    sampling: SamplingOptions,
    *,
    stats: GenerationStats | None = None,
    progress: bool | None = None,
) -> list[Trace]:
    """``sampling.n`` traces per problem, ordered by problem then sample index (skipped prompts have none).
    ``stats`` is filled in when given; ``progress`` defaults to the backend's ``progress`` attribute."""
    if progress is None:
        progress = bool(getattr(backend, "progress", False))
    by_id: dict[str, list[Trace]] = {}
    for traces in stream_traces(backend, problems, tokenizer, prompt, sampling, stats=stats, progress=progress):
        by_id[traces[0].problem.id] = traces
    return [trace for problem in problems for trace in by_id.get(problem.id, [])]
