"""Grade: score completions against gold answers with math-verify, in bounded time, from any thread.

``verify_completion`` grades one completion (safe in Lightning callbacks, threads, DataLoader workers);
``verify_records`` grades many over a pool of worker processes (``pool.py``). Counts and tables are in
``summary.py``, the ``w2sr verify`` files in ``stage.py``.
Exercised by ``w2sr verify --input traces.jsonl --output verified.jsonl`` and ``pytest tests/verification``.

Scoring rules
* The answer is extracted by ``w2sr.verification.extract.extract_answer`` with the ``grader`` preset (``paper``: the
  last box only; ``default``: last box group, "the answer is", ``####``; ``lenient``: also the last number), then
  compared with ``math_verify.verify(gold, prediction)`` (gold first), both parsed from ``\\boxed{...}``. No
  answer = wrong.
* Gold answers are normalised per source (``w2sr.verification.gold.normalize_gold``; a worked solution's box is read
  by the grader's own rule, so with ``paper`` its last box); an unparseable gold gives
  ``correct: null`` and status ``bad_gold``: never scored as wrong, counted in the summary, outside W2SR-P/N.
* Each answer must be decided within ``timeout`` seconds (the worker is killed otherwise), or within 3x that on the one
  retry it then gets (so a verdict near the limit does not depend on machine load): status ``timeout``,
  scored wrong (like the paper's 3-second grader). A crash or exception in math-verify: status ``error``, wrong.
* Truncated completions (``finish_reason == "length"``) are scored like any other (usually no box, so wrong, as in
  the paper) and counted as truncated; ``truncated_as_wrong=True`` forces them wrong (status ``truncated``).
* Records whose source is GPQA (or ``mode="choice"``) compare multiple-choice letters; an answer that repeats one
  option's text (the record's ``choices``, ``"D) 10^-4 eV"``) counts as that option's letter.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from w2sr.records.jsonl import InputError
from w2sr.records.options import check_choice, document_fields
from w2sr.verification.equivalence import prepare_pair
from w2sr.verification.extract import Grader, Mode, extract_answer
from w2sr.verification.gold import canonical_source, choice_from_text, normalize_gold, strip_unit
from w2sr.verification.pool import BAD_GOLD, CORRECT, ERROR, SHARED_LOCK, TIMEOUT, WRONG, WorkerPool, shared_pool

NO_ANSWER, TRUNCATED = "no_answer", "truncated"
STATUSES = (CORRECT, WRONG, NO_ANSWER, BAD_GOLD, TIMEOUT, ERROR, TRUNCATED)


@dataclass
class Verdict:
    """Outcome for one completion. ``correct`` is None only when the gold answer cannot be parsed."""

    prediction: str | None
    correct: bool | None
    status: str  # one of STATUSES
    truncated: bool = False
    detail: str = ""


@document_fields
@dataclass
class VerifyOptions:
    """How to read records and how to grade them (the scoring rules are in this module's docstring)."""

    workers: int = 1
    """grading processes (each a killable math-verify worker)."""
    timeout: float = 5.0
    """seconds per answer (gold parse, prediction parse and compare), enforced by killing the worker."""
    mode: Mode = "boxed"
    """``boxed`` (a math answer) or ``choice`` (a multiple-choice letter); GPQA sources always use ``choice``."""
    grader: Grader = "default"
    """which answer is extracted: ``paper`` (the last ``\\boxed{}`` only), ``default`` (the last box group, "the
    answer is", ``####``) or ``lenient`` (also the last number)."""
    last_number_fallback: bool = False
    """kept for old configs: turns ``default`` into ``lenient``."""
    completion_field: str = "completion"
    """the record field holding the completion."""
    answer_field: str = "answer"
    """the record field holding the gold answer."""
    id_field: str = "id"
    """the record field holding the problem id."""
    source_field: str = "source"
    """the record field naming the benchmark or dataset (picks the gold normalisation, GPQA's choice mode)."""
    finish_reason_field: str = "finish_reason"
    """the record field holding ``stop`` / ``length`` (truncated completions are counted)."""
    tokens_field: str = "completion_tokens"
    """the record field holding the completion's token count."""
    status_field: str | None = "verify_status"
    """an extra output field with each verdict's status; null leaves it out."""
    truncated_as_wrong: bool = False
    """score truncated completions (``finish_reason: length``) wrong whatever they contain."""
    memory_mb: int = 4096
    """address-space limit of each worker process in MB (0 = none)."""
    retry_factor: float = 3.0
    """an answer over ``timeout`` is retried once under ``timeout * retry_factor`` (1 = never)."""

    def __post_init__(self) -> None:
        check_choice(self.grader, Grader, "options.grader")
        if self.last_number_fallback and self.grader == "paper":
            raise InputError(
                "the paper grader has no last-number fallback; use --options.grader lenient",
                field="options.last_number_fallback",
            )
        if self.last_number_fallback and self.grader == "default":
            self.grader = "lenient"
        check_choice(self.mode, Mode, "options.mode")
        if int(self.workers) < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}", field="options.workers")
        if not self.timeout > 0:
            raise InputError(f"timeout must be > 0 seconds, got {self.timeout}", field="options.timeout")
        if not self.retry_factor >= 1:
            raise InputError(f"retry_factor must be >= 1, got {self.retry_factor}", field="options.retry_factor")


@dataclass
class _Item:
    gold: str | None
    verdict: Verdict  # verdict.prediction holds the form sent to math-verify until grading is done
    needs_pool: bool
    prediction: str | None = None  # the extracted answer, restored into the verdict after grading


def _prepare(
    gold: Any, completion: str, source: str | None, record: dict | None, options: VerifyOptions, truncated: bool
) -> _Item:
    family = canonical_source(source)
    mode = "choice" if family == "gpqa" else options.mode
    gold_text = normalize_gold(gold, source, record if gold is None else None, last_box_only=options.grader == "paper")
    prediction = extract_answer(completion, mode=mode, grader=options.grader)
    if mode == "choice" and prediction is None and record and isinstance(record.get("choices"), list):
        # the answer is an option's text, not its letter (GPQA): the letter of the option it repeats
        prediction = choice_from_text(extract_answer(completion, grader=options.grader), record["choices"])
    if prediction is not None and record and record.get("unit"):
        prediction = strip_unit(prediction, str(record["unit"]))
    if gold_text is None:
        return _Item(None, Verdict(prediction, None, BAD_GOLD, truncated, "gold answer cannot be parsed"), False)
    if truncated and options.truncated_as_wrong:
        return _Item(gold_text, Verdict(prediction, False, TRUNCATED, truncated), False)
    if prediction is None:
        return _Item(gold_text, Verdict(None, False, NO_ANSWER, truncated), False)
    if mode == "choice":
        ok = prediction.strip().upper() == gold_text.strip().upper()
        return _Item(gold_text, Verdict(prediction, ok, CORRECT if ok else WRONG, truncated), False)
    question = record.get("problem", record.get("question")) if record else None
    unordered = True if record and record.get("is_multiple_answer") is True else None
    compared, gold_text, wrong = prepare_pair(
        prediction, gold_text, question if isinstance(question, str) else None, unordered
    )
    if wrong:
        return _Item(gold_text, Verdict(prediction, False, WRONG, truncated, wrong), False)
    item = _Item(gold_text, Verdict(compared, None, "", truncated), True)
    item.prediction = prediction
    return item


def _grade(items: list[_Item], pool: WorkerPool, chunk: int, progress: Any = None) -> None:
    """Fill in pool verdicts in place; predictions are grouped by gold (parsed once per group)."""
    by_gold: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        if item.needs_pool:
            by_gold[item.gold].append(index)
    groups: list[tuple[str, list[str]]] = []
    owners: list[list[int]] = []
    for gold, indices in by_gold.items():
        for start in range(0, len(indices), chunk):
            part = indices[start : start + chunk]
            groups.append((gold, [items[i].verdict.prediction for i in part]))
            owners.append(part)

    def on_result(group: int, position: int, outcome: str, detail: str) -> None:
        verdict = items[owners[group][position]].verdict
        verdict.status, verdict.detail = outcome, detail
        verdict.correct = None if outcome == BAD_GOLD else outcome == CORRECT
        if progress is not None:
            progress()

    if groups:
        pool.run(groups, on_result)
    for item in items:
        if item.prediction is not None:
            item.verdict.prediction, item.prediction = item.prediction, None


def verify_completion(
    gold: Any,
    completion: str,
    *,
    source: str | None = None,
    record: dict | None = None,
    options: VerifyOptions | None = None,
    truncated: bool = False,
) -> Verdict:
    """Grade one completion against one raw gold answer (normalised per ``source``; ``record`` supplies the gold
    when ``gold`` is None, and OlympiadBench's ``unit``). Safe from any thread; decided within ``options.timeout``
    seconds of compute (calls from several threads share one worker process and queue for it)."""
    options = options or VerifyOptions()
    item = _prepare(gold, completion, source, record, options, truncated)
    if item.needs_pool:
        with SHARED_LOCK:
            _grade([item], shared_pool(options), chunk=1)
    return item.verdict


def _record_field(record: dict, name: str, index: int) -> Any:
    if name not in record:
        raise InputError("missing required field", path="<records>", line=index + 1, field=name)
    return record[name]


def _prepare_records(records: list[dict], options: VerifyOptions) -> list[_Item]:
    items: list[_Item] = []
    for index, record in enumerate(records):
        completion = _record_field(record, options.completion_field, index)
        if not isinstance(completion, str):
            raise InputError("expected a string", path="<records>", line=index + 1, field=options.completion_field)
        gold = _record_field(record, options.answer_field, index)
        source = record.get(options.source_field)
        truncated = record.get(options.finish_reason_field) == "length"
        items.append(_prepare(gold, completion, None if source is None else str(source), record, options, truncated))
    return items


def _grade_items(
    items: list[_Item], options: VerifyOptions, pool: WorkerPool | None, progress: bool, stack: ExitStack
) -> None:
    to_grade = sum(item.needs_pool for item in items)
    advance = None
    if progress and to_grade:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        bar = stack.enter_context(
            Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
        )
        task = bar.add_task("verifying", total=to_grade)

        def advance() -> None:
            bar.advance(task)

    if pool is not None:
        chunk = max(8, min(256, to_grade // (options.workers * 8) or 1))
        _grade(items, pool, chunk, advance)
    else:
        with SHARED_LOCK:
            _grade(items, shared_pool(options), chunk=max(1, to_grade), progress=advance)


def verify_records(records: list[dict], options: VerifyOptions, progress: bool = False) -> list[dict]:
    """New dicts with ``prediction``, ``correct`` (and ``options.status_field``) added, in input order.

    ``options.workers > 1`` grades over that many worker processes; otherwise the shared single worker is used.
    A record missing the completion or answer field raises :class:`InputError` (``line`` = 1-based position).
    """
    with ExitStack() as stack:
        pool = None
        if options.workers > 1:  # start the workers first: they import math-verify while answers are extracted
            pool = stack.enter_context(
                WorkerPool(options.workers, options.timeout, options.memory_mb, retry_factor=options.retry_factor)
            )
            pool.start()
        items = _prepare_records(records, options)
        _grade_items(items, options, pool, progress, stack)
    out = []
    for record, item in zip(records, items):
        verdict = item.verdict
        new = {**record, "prediction": verdict.prediction, "correct": verdict.correct}
        if options.status_field:
            new[options.status_field] = verdict.status
            new["grader"] = options.grader
            if verdict.truncated:  # flagged on the record, not only counted: cut completions are never silent
                new["truncated"] = True
        out.append(new)
    return out
