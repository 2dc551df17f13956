"""The embedded default's weak teacher as a generation backend (``w2sr generate --backend toy``).

It answers the toy arithmetic problems of ``w2sr.toy`` with a programmatic, deliberately imperfect solver, so the
quickstart has a teacher without downloading one. Completions longer than ``max_new_tokens`` (counted with the
model's tokenizer) are cut and marked ``length``, as a real model's would be. Exercised by ``make quickstart``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from w2sr.generation.base import Completion, GenerationRequest, SamplingOptions
from w2sr.toy import ToyTeacher

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class ToyTeacherBackend:
    """Programmatic weak teacher; ``sampling.seed`` seeds its mistakes, sample ``i`` is a different draw."""

    kind = "toy"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, error_rate: float = 0.3) -> None:
        self.tokenizer, self.error_rate = tokenizer, error_rate
        self.name = ToyTeacher(error_rate=error_rate).name

    def generate(self, requests: list[GenerationRequest], sampling: SamplingOptions) -> list[list[Completion]]:
        teacher = ToyTeacher(error_rate=self.error_rate, seed=sampling.seed)
        results = []
        for request in requests:
            samples = []
            cap = request.new_tokens(sampling)
            for index in request.sample_indices(sampling):
                text = teacher.solve(request.problem.problem, sample=index)
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                if len(ids) > cap:
                    ids = ids[:cap]
                    samples.append(Completion(self.tokenizer.decode(ids), "length", len(ids)))
                else:
                    samples.append(Completion(text, "stop", len(ids) + 1))  # + the end-of-turn token
            results.append(samples)
        return results
