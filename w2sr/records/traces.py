"""Traces: what the teacher wrote for a problem, before and after verification, and the W2SR training variants.

A trace is a problem record plus ``sample``, ``teacher``, ``prompt`` (the chat messages sent), ``completion``,
``finish_reason`` (``stop`` | ``length``) and ``completion_tokens``. A verified trace adds ``prediction`` (the
extracted answer or null) and ``correct`` (true | false | null when the gold answer cannot be parsed).
The paper's three training sets are views over verified traces: W2SR (all), W2SR-P (correct), W2SR-N (incorrect).
Exercised by ``w2sr verify`` / ``w2sr fit`` and ``pytest tests/records/test_traces.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from w2sr.records.jsonl import InputError, iter_jsonl
from w2sr.records.problems import CORE_FIELDS, Problem

FinishReason = Literal["stop", "length"]
Variant = Literal["all", "correct", "incorrect"]
VARIANT_NAMES = {"all": "W2SR", "correct": "W2SR-P", "incorrect": "W2SR-N"}

TRACE_FIELDS = ("sample", "teacher", "prompt", "completion", "finish_reason", "completion_tokens")
VERIFIED_FIELDS = ("prediction", "correct")
TRACE_REQUIRED = (*CORE_FIELDS, *TRACE_FIELDS)
VERIFIED_REQUIRED = (*TRACE_REQUIRED, *VERIFIED_FIELDS)


@dataclass
class Trace:
    """One sampled completion for one problem; ``prediction``/``correct`` are filled in by verification."""

    problem: Problem
    sample: int
    teacher: str
    prompt: list[dict[str, str]]
    completion: str
    finish_reason: FinishReason
    completion_tokens: int
    prediction: str | None = None
    correct: bool | None = None
    verified: bool = field(default=False, repr=False)

    @property
    def key(self) -> str:
        """``"<problem id>#<sample>"`` (:func:`trace_key`)."""
        return trace_key(self.problem.id, self.sample)

    def to_dict(self) -> dict[str, Any]:
        record = self.problem.to_dict()
        record.update(
            sample=self.sample,
            teacher=self.teacher,
            prompt=self.prompt,
            completion=self.completion,
            finish_reason=self.finish_reason,
            completion_tokens=self.completion_tokens,
        )
        if self.verified:
            record.update(prediction=self.prediction, correct=self.correct)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Trace:
        core = {k: v for k, v in record.items() if k not in (*TRACE_FIELDS, *VERIFIED_FIELDS)}
        return cls(
            problem=Problem.from_dict(core),
            sample=int(record["sample"]),
            teacher=str(record["teacher"]),
            prompt=record["prompt"],
            completion=record["completion"],
            finish_reason=record["finish_reason"],
            completion_tokens=int(record["completion_tokens"]),
            prediction=record.get("prediction"),
            correct=record.get("correct"),
            verified=all(k in record for k in VERIFIED_FIELDS),
        )


def _check_trace(record: dict[str, Any], path: Path, line: int) -> None:
    prompt = record["prompt"]
    if not isinstance(prompt, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
    ):
        raise InputError("expected a list of {role, content} messages", path=path, line=line, field="prompt")
    if not isinstance(record["completion"], str):
        raise InputError("expected a string", path=path, line=line, field="completion")
    if record["finish_reason"] not in ("stop", "length"):
        raise InputError("expected 'stop' or 'length'", path=path, line=line, field="finish_reason")
    for name in ("sample", "completion_tokens"):
        if isinstance(record[name], bool) or not isinstance(record[name], int) or record[name] < 0:
            raise InputError("expected a non-negative integer", path=path, line=line, field=name)
    if "correct" in record and record["correct"] not in (True, False, None):
        raise InputError("expected true, false or null", path=path, line=line, field="correct")


def read_traces(path: str | Path, verified: bool = False) -> list[Trace]:
    """Read (verified) traces, validating every line; errors name the file, line and field."""
    path = Path(path)
    traces = []
    for line, record in iter_jsonl(path, VERIFIED_REQUIRED if verified else TRACE_REQUIRED):
        _check_trace(record, path, line)
        traces.append(Trace.from_dict(record))
    if not traces:
        raise InputError("no traces found", path=path)
    return traces


def trace_key(problem_id: str, sample: int) -> str:
    """The one name of a trace in keys, logs and prediction files: ``"<problem id>#<sample>"``.

    >>> trace_key("gsm8k-12", 3)
    'gsm8k-12#3'
    """
    return f"{problem_id}#{sample}"


def in_variant(correct: bool | None, variant: Variant) -> bool:
    """The W2SR / -P / -N rule: does a trace whose verdict is ``correct`` belong to the training set ``variant``?

    W2SR (``all``) holds every trace, W2SR-P (``correct``) the verified correct ones, W2SR-N (``incorrect``) the
    verified wrong ones; a trace whose gold answer could not be parsed (``correct`` is null) is in W2SR only.

    >>> [v for v in VARIANT_NAMES if in_variant(None, v)], [v for v in VARIANT_NAMES if in_variant(False, v)]
    (['all'], ['all', 'incorrect'])
    """
    if variant == "all":
        return True
    if variant == "correct":
        return correct is True
    if variant == "incorrect":
        return correct is False
    raise ValueError(f"unknown variant {variant!r}; expected one of {list(VARIANT_NAMES)}")


def select_variant(traces: Iterable[Trace], variant: Variant) -> list[Trace]:
    """The traces of W2SR (``all``), W2SR-P (``correct``) or W2SR-N (``incorrect``): see :func:`in_variant`."""
    return [t for t in traces if in_variant(t.correct, variant)]


def variant_sizes(traces: Sequence[Trace]) -> dict[str, int]:
    """Sizes of the three training sets, keyed by the paper's names."""
    return {VARIANT_NAMES[v]: len(select_variant(traces, v)) for v in VARIANT_NAMES}  # type: ignore[arg-type]
