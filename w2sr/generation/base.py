"""The generation interface every backend implements: requests in, one completion per requested sample out.

A backend only turns rendered prompts into completions; prompts, guards, trace records and files are the stage's
job (``w2sr.generation.run``). Each request carries the sample indices still to generate, a seed per sample
(:func:`sample_seed`) and its own cap on new tokens (the context guard). A backend may also offer ``stream``,
yielding each request's completions as soon as they are done, which is what makes the output crash-safe.
Exercised by ``pytest tests/generation/test_generation.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from w2sr.records.jsonl import InputError
from w2sr.records.options import document_fields
from w2sr.records.problems import Problem


@document_fields
@dataclass
class SamplingOptions:
    """How to sample: n completions per problem, greedy or at a temperature, repeatable from a seed."""

    n: int = 1
    """completions per problem (more than 1 needs ``temperature`` above 0)."""
    temperature: float = 0.0
    """sampling temperature; 0 is greedy decoding."""
    top_p: float = 1.0
    """nucleus sampling: keep the most likely tokens whose probabilities add up to ``top_p``, in (0, 1]."""
    max_new_tokens: int = 4096
    """the most tokens a completion may have (a longer one is cut: ``finish_reason: length``)."""
    seed: int = 0
    """makes runs repeatable: sample ``s`` of problem ``p`` is seeded from ``(seed, p.id, s)`` (:func:`sample_seed`),
    whatever the batch size, shard or resume."""
    batch_size: int = 16
    """prompts generated together (HF backend)."""

    def __post_init__(self) -> None:
        for name in ("n", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"must be at least 1, got {getattr(self, name)}", field=f"sampling.{name}")
        if self.temperature < 0:
            raise InputError(f"must be >= 0, got {self.temperature}", field="sampling.temperature")
        if self.n > 1 and self.temperature == 0:
            raise InputError(
                f"{self.n} samples per problem need sampling: greedy decoding (temperature 0) gives the "
                "same completion every time; set sampling.temperature above 0 (e.g. 0.6) or sampling.n 1",
                field="sampling.n",
            )
        if not 0 < self.top_p <= 1:
            raise InputError(f"must be in (0, 1], got {self.top_p}", field="sampling.top_p")


def sample_seed(seed: int, problem_id: str, sample: int) -> int:
    """The seed of sample ``sample`` of problem ``problem_id``: a stable hash (BLAKE2b, not Python's salted
    ``hash``) of the run seed, the id and the index, in [0, 2**31). It depends on nothing else, so a problem's samples
    do not change with batch size, ``--limit``, sharding or resuming wherever the backend seeds per request."""
    digest = hashlib.blake2b(f"{seed}\x1f{problem_id}\x1f{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


@dataclass
class GenerationRequest:
    """One problem, the chat messages built for it and the prompt text they render to.

    ``prompt_ids`` are the prompt's tokens (the text tokenized without added special tokens: exactly what the HF
    backend feeds the model); ``samples`` the sample indices to generate (default ``range(n)``); ``seeds`` one seed
    per entry of ``samples``; ``max_new_tokens`` this request's cap (default ``sampling.max_new_tokens``).
    """

    problem: Problem
    messages: list[dict[str, str]]
    text: str
    prompt_ids: list[int] | None = None
    samples: list[int] | None = None
    seeds: list[int] | None = None
    max_new_tokens: int | None = None

    def sample_indices(self, sampling: SamplingOptions) -> list[int]:
        return list(range(sampling.n)) if self.samples is None else list(self.samples)

    def sample_seeds(self, sampling: SamplingOptions) -> list[int]:
        if self.seeds is not None:
            return list(self.seeds)
        return [sample_seed(sampling.seed, self.problem.id, s) for s in self.sample_indices(sampling)]

    def new_tokens(self, sampling: SamplingOptions) -> int:
        return sampling.max_new_tokens if self.max_new_tokens is None else self.max_new_tokens


@dataclass
class Completion:
    """One sampled completion; ``finish_reason`` is ``stop`` (ended by a stop token) or ``length`` (cut).
    ``tokens`` counts the generated tokens including the stop token."""

    text: str
    finish_reason: Literal["stop", "length"]
    tokens: int


class GenerationBackend(Protocol):
    """Anything that returns one completion per requested sample for each request, in request order.

    Optional extras a backend may have: ``stream(requests, sampling)`` yielding ``(request_index, completions)`` as
    requests finish, and ``context_length`` (the model's context in tokens, for the guards).
    """

    name: str

    def generate(self, requests: list[GenerationRequest], sampling: SamplingOptions) -> list[list[Completion]]: ...


def stream_completions(
    backend: GenerationBackend, requests: list[GenerationRequest], sampling: SamplingOptions
) -> Iterator[tuple[int, list[Completion]]]:
    """``(request_index, completions)`` as they finish: the backend's ``stream`` when it has one, else its
    ``generate`` over chunks of ``sampling.batch_size`` requests."""
    stream = getattr(backend, "stream", None)
    if stream is not None:
        yield from stream(requests, sampling)
        return
    for start in range(0, len(requests), sampling.batch_size):
        chunk = requests[start : start + sampling.batch_size]
        for offset, completions in enumerate(backend.generate(chunk, sampling)):
            yield start + offset, completions
