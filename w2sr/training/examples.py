"""Examples: one verified trace -> the token ids and prompt-masked labels the student trains on.

The prompt is the trace's own chat messages rendered with the tokenizer's chat template (exactly what the teacher
saw), the response the teacher's completion plus the template's end-of-turn token (none when the teacher was cut at
its token limit). Prompt and response are tokenized separately, so the prompt ids are the ones the model is given at
generation time. ``w2sr.training.datamodule`` makes its examples here, ``w2sr.training.batching`` batches them.
Exercised by ``pytest tests/training/test_data.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from w2sr.records.jsonl import InputError
from w2sr.records.prompts import render_conversation, render_prompt
from w2sr.records.traces import Trace

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass
class Example:
    """One tokenized training example."""

    input_ids: list[int]
    """the prompt's token ids, then the response's."""
    labels: list[int]
    """``input_ids`` with the prompt's tokens replaced by -100 (no loss on them)."""
    problem_id: str
    """the trace's problem (validation is split by problem)."""
    key: str = ""
    """``"<problem id>#<sample>"`` (:func:`w2sr.records.traces.trace_key`), carried into batches for per-trace
    outputs."""
    prompt_length: int = 0
    """leading prompt tokens (label -100)."""

    @property
    def num_targets(self) -> int:
        """Tokens with a loss (the first token is never predicted); ``list.count`` runs at C speed."""
        if not self.labels:
            return 0
        ignored = self.labels.count(IGNORE_INDEX) - (self.labels[0] == IGNORE_INDEX)
        return len(self.labels) - 1 - ignored


def render_trace(
    tokenizer: PreTrainedTokenizerBase, trace: Trace, use_chat_template: bool = True, end_of_turn: bool | None = None
) -> tuple[str, str]:
    """``(prompt, response)`` text. ``end_of_turn`` (default: unless the teacher was cut at its limit) closes the
    response with the template's end-of-turn token; without it the response is the completion alone, exactly the
    tokens the teacher produced after the prompt."""
    if end_of_turn is None:
        end_of_turn = trace.finish_reason != "length"
    try:
        if end_of_turn:
            return render_conversation(tokenizer, trace.prompt, trace.completion, use_chat_template)
        return render_prompt(tokenizer, trace.prompt, use_chat_template), trace.completion
    except ValueError as err:
        raise InputError(str(err), field="data.use_chat_template") from None


def tokenize_trace(
    tokenizer: PreTrainedTokenizerBase, trace: Trace, use_chat_template: bool = True, end_of_turn: bool | None = None
) -> Example:
    """Prompt ids + response ids, with the prompt masked: the one tokenization of a trace (``fit``, ``test``,
    ``predict`` and the tests all go through it).

    Prompt and response are tokenized separately and concatenated, so the prompt ids are exactly the ones the model
    is given at generation time (no merge across the boundary can shift the mask).
    """
    prompt, response = render_trace(tokenizer, trace, use_chat_template, end_of_turn)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return Example(
        input_ids=prompt_ids + response_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids,
        problem_id=trace.problem.id,
        key=trace.key,
        prompt_length=len(prompt_ids),
    )


def in_validation(problem_id: str, fraction: float, seed: int) -> bool:
    """A stable, platform-independent split by problem id (a hash, not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
