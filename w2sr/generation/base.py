"""The generation interface every backend implements: requests in, ``n`` completions per request out.

A backend only turns rendered prompts into completions; prompts, trace records and files are the stage's job
(``w2sr.generation.run``). Exercised by ``pytest tests/test_generation.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from w2sr.jsonl import InputError
from w2sr.problems import Problem


@dataclass
class SamplingOptions:
    """How to sample. ``temperature: 0`` is greedy; ``n`` completions per problem; ``seed`` makes runs repeatable."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 4096
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        for name in ("n", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"must be at least 1, got {getattr(self, name)}", field=f"sampling.{name}")
        if self.temperature < 0:
            raise InputError(f"must be >= 0, got {self.temperature}", field="sampling.temperature")
        if self.n > 1 and self.temperature == 0:
            raise InputError(f"{self.n} samples per problem need sampling: greedy decoding (temperature 0) gives the "
                             "same completion every time; set sampling.temperature above 0 (e.g. 0.6) or sampling.n 1",
                             field="sampling.n")
        if not 0 < self.top_p <= 1:
            raise InputError(f"must be in (0, 1], got {self.top_p}", field="sampling.top_p")


@dataclass
class GenerationRequest:
    """One problem, the chat messages built for it and the prompt text they render to."""

    problem: Problem
    messages: list[dict[str, str]]
    text: str


@dataclass
class Completion:
    """One sampled completion; ``finish_reason`` is ``stop`` (ended by a stop token) or ``length`` (cut)."""

    text: str
    finish_reason: Literal["stop", "length"]
    tokens: int


class GenerationBackend(Protocol):
    """Anything that returns ``sampling.n`` completions for each request, in request order."""

    name: str

    def generate(self, requests: list[GenerationRequest], sampling: SamplingOptions) -> list[list[Completion]]:
        ...
