"""The generation stage: problems -> prompts -> completions from a backend -> trace records (JSONL).

``w2sr generate --model.model_name_or_path TEACHER --problems FILE --output traces.jsonl`` runs it from the CLI;
``w2sr evaluate`` reuses :func:`generate_traces` in memory. Exercised by ``pytest tests/test_cli_e2e.py``.
"""

from __future__ import annotations

from typing import Any

from w2sr.generation.base import GenerationBackend, GenerationRequest, SamplingOptions
from w2sr.prompts import PromptOptions, build_messages, render_prompt
from w2sr.problems import Problem
from w2sr.traces import Trace


def build_requests(problems: list[Problem], tokenizer: Any, prompt: PromptOptions) -> list[GenerationRequest]:
    """Chat messages and rendered prompt text for each problem."""
    requests = []
    for problem in problems:
        messages = build_messages(problem.problem, prompt)
        requests.append(GenerationRequest(problem=problem, messages=messages,
                                          text=render_prompt(tokenizer, messages, prompt.use_chat_template)))
    return requests


def generate_traces(backend: GenerationBackend, problems: list[Problem], tokenizer: Any, prompt: PromptOptions,
                    sampling: SamplingOptions) -> list[Trace]:
    """``sampling.n`` traces per problem, ordered by problem then sample index."""
    requests = build_requests(problems, tokenizer, prompt)
    completions = backend.generate(requests, sampling)
    if len(completions) != len(requests) or any(len(c) != sampling.n for c in completions):
        raise RuntimeError(f"backend {backend.name!r} returned the wrong number of completions")
    return [Trace(problem=request.problem, sample=index, teacher=backend.name, prompt=request.messages,
                  completion=completion.text, finish_reason=completion.finish_reason,
                  completion_tokens=completion.tokens)
            for request, samples in zip(requests, completions) for index, completion in enumerate(samples)]
