"""Verification: score completions against gold answers with math-verify, in bounded time, from any thread.

``verify_completion`` grades one completion (safe in Lightning callbacks, threads, DataLoader workers);
``verify_records`` grades many over a pool of worker processes; ``summarize`` / ``print_summary`` report counts,
accuracy, truncation and the W2SR / W2SR-P / W2SR-N sizes; ``verify_file`` does it all for a JSONL file.
Exercised by ``w2sr verify --input traces.jsonl --output verified.jsonl`` and ``pytest tests/test_verify*.py``.

Scoring rules
* The answer is extracted by ``w2sr.verification.extract.extract_answer`` with the ``grader`` preset (``paper``: the last box
  only; ``default``: last box group, "the answer is", ``####``; ``lenient``: also the last number), then compared with
  ``math_verify.verify(gold, prediction)`` (gold first), both parsed from ``\\boxed{...}``. No answer = wrong.
* Gold answers are normalised per source (``w2sr.verification.extract.normalize_gold``); an unparseable gold gives
  ``correct: null`` and status ``bad_gold``: never scored as wrong, counted in the summary, outside W2SR-P/N.
* Each answer must be decided within ``timeout`` seconds (the worker is killed otherwise), or within 3x that on the one
  retry it then gets (so a verdict near the limit does not depend on machine load): status ``timeout``,
  scored wrong (like the paper's 3-second grader). A crash or exception in math-verify: status ``error``, wrong.
* Truncated completions (``finish_reason == "length"``) are scored like any other (usually no box, so wrong, as in
  the paper) and counted as truncated; ``truncated_as_wrong=True`` forces them wrong (status ``truncated``).
* Records whose source is GPQA (or ``mode="choice"``) compare multiple-choice letters.
"""

from __future__ import annotations

import atexit
import os
import re
import statistics
import threading
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from w2sr.verification.extract import GRADERS, MODES, canonical_source, extract_answer, normalize_gold, prepare_pair, strip_unit
from w2sr.records.jsonl import InputError, atomic_open, check_not_input, check_output, dumps, iter_jsonl
from w2sr.records.traces import VARIANT_NAMES
from w2sr.verification.pool import BAD_GOLD, CORRECT, ERROR, TIMEOUT, WRONG, WorkerPool

NO_ANSWER, TRUNCATED = "no_answer", "truncated"
STATUSES = (CORRECT, WRONG, NO_ANSWER, BAD_GOLD, TIMEOUT, ERROR, TRUNCATED)
SPLIT_FILES = {"all": "w2sr.records.jsonl", "correct": "w2sr_p.jsonl", "incorrect": "w2sr_n.jsonl"}


@dataclass
class Verdict:
    """Outcome for one completion. ``correct`` is None only when the gold answer cannot be parsed."""

    prediction: str | None
    correct: bool | None
    status: str  # one of STATUSES
    truncated: bool = False
    detail: str = ""


@dataclass
class VerifyOptions:
    """How to read records and how to grade them."""

    workers: int = 1
    timeout: float = 5.0  # seconds per answer (gold parse, prediction parse + compare), enforced by killing
    mode: str = "boxed"  # "boxed" or "choice"; GPQA sources always use "choice"
    grader: str = "default"  # "paper" (last \boxed{} only), "default" (box, "the answer is", ####), "lenient" (+ last number)
    last_number_fallback: bool = False  # kept for old configs: turns "default" into "lenient"
    completion_field: str = "completion"
    answer_field: str = "answer"
    id_field: str = "id"
    source_field: str = "source"
    finish_reason_field: str = "finish_reason"
    tokens_field: str = "completion_tokens"
    status_field: str | None = "verify_status"  # extra output field with the status; None to leave it out
    truncated_as_wrong: bool = False
    memory_mb: int = 4096  # address-space limit of each worker process (0 = none)
    retry_factor: float = 3.0  # an answer over ``timeout`` is retried once under timeout * retry_factor (1 = never)

    def __post_init__(self) -> None:
        if self.grader not in GRADERS:
            raise InputError(f"grader must be one of {GRADERS}, got {self.grader!r}", field="options.grader")
        if self.last_number_fallback and self.grader == "paper":
            raise InputError("the paper grader has no last-number fallback; use --options.grader lenient",
                             field="options.last_number_fallback")
        if self.last_number_fallback and self.grader == "default":
            self.grader = "lenient"
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}", field="options.mode")
        if int(self.workers) < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}", field="options.workers")
        if not self.timeout > 0:
            raise InputError(f"timeout must be > 0 seconds, got {self.timeout}", field="options.timeout")
        if not self.retry_factor >= 1:
            raise InputError(f"retry_factor must be >= 1, got {self.retry_factor}", field="options.retry_factor")


# ------------------------------------------------------------------------------------------ shared worker (threads)
_SHARED_LOCK = threading.Lock()
_SHARED: dict[str, WorkerPool] = {}


def _close_shared() -> None:
    for pool in _SHARED.values():
        pool.close()


atexit.register(_close_shared)


def _shared_pool(options: VerifyOptions) -> WorkerPool:
    """The process-wide single worker (call with ``_SHARED_LOCK`` held); a forked child makes its own."""
    pool = _SHARED.get("pool")
    if pool is None or pool.pid != os.getpid():
        pool = _SHARED["pool"] = WorkerPool(1, options.timeout, options.memory_mb)
    pool.timeout, pool.retry_factor = options.timeout, options.retry_factor
    return pool


# ------------------------------------------------------------------------------------------------- core
@dataclass
class _Item:
    gold: str | None
    verdict: Verdict  # verdict.prediction holds the form sent to math-verify until grading is done
    needs_pool: bool
    prediction: str | None = None  # the extracted answer, restored into the verdict after grading


def _prepare(gold: Any, completion: str, source: str | None, record: dict | None, options: VerifyOptions,
             truncated: bool) -> _Item:
    family = canonical_source(source)
    mode = "choice" if family == "gpqa" else options.mode
    gold_text = normalize_gold(gold, source, record if gold is None else None)
    prediction = extract_answer(completion, mode=mode, grader=options.grader)
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
    compared, gold_text, wrong = prepare_pair(prediction, gold_text, question if isinstance(question, str) else None,
                                              unordered)
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
            part = indices[start:start + chunk]
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


def verify_completion(gold: Any, completion: str, *, source: str | None = None, record: dict | None = None,
                      options: VerifyOptions | None = None, truncated: bool = False) -> Verdict:
    """Grade one completion against one raw gold answer (normalised per ``source``; ``record`` supplies the gold
    when ``gold`` is None, and OlympiadBench's ``unit``). Safe from any thread; decided within ``options.timeout``
    seconds of compute (calls from several threads share one worker process and queue for it)."""
    options = options or VerifyOptions()
    item = _prepare(gold, completion, source, record, options, truncated)
    if item.needs_pool:
        with _SHARED_LOCK:
            _grade([item], _shared_pool(options), chunk=1)
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
        items.append(_prepare(gold, completion, None if source is None else str(source), record, options,
                              truncated))
    return items


def _grade_items(items: list[_Item], options: VerifyOptions, pool: WorkerPool | None, progress: bool,
                 stack: ExitStack) -> None:
    to_grade = sum(item.needs_pool for item in items)
    advance = None
    if progress and to_grade:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        bar = stack.enter_context(Progress("[progress.description]{task.description}", BarColumn(),
                                           MofNCompleteColumn(), TimeRemainingColumn(), transient=False))
        task = bar.add_task("verifying", total=to_grade)

        def advance() -> None:
            bar.advance(task)

    if pool is not None:
        chunk = max(8, min(256, to_grade // (options.workers * 8) or 1))
        _grade(items, pool, chunk, advance)
    else:
        with _SHARED_LOCK:
            _grade(items, _shared_pool(options), chunk=max(1, to_grade), progress=advance)


def verify_records(records: list[dict], options: VerifyOptions, progress: bool = False) -> list[dict]:
    """New dicts with ``prediction``, ``correct`` (and ``options.status_field``) added, in input order.

    ``options.workers > 1`` grades over that many worker processes; otherwise the shared single worker is used.
    A record missing the completion or answer field raises :class:`InputError` (``line`` = 1-based position).
    """
    with ExitStack() as stack:
        pool = None
        if options.workers > 1:  # start the workers first: they import math-verify while answers are extracted
            pool = stack.enter_context(WorkerPool(options.workers, options.timeout, options.memory_mb,
                                                  retry_factor=options.retry_factor))
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


# ------------------------------------------------------------------------------------------------- summary
def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"mean": round(statistics.fmean(ordered), 1), "median": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "max": ordered[-1], "min": ordered[0]}


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def summarize(records: list[dict], options: VerifyOptions | None = None) -> dict:
    """Counts and rates over verified records (see the module docstring); accuracy is over ``correct`` not null."""
    options = options or VerifyOptions()
    total = len(records)
    right = sum(r.get("correct") is True for r in records)
    wrong = sum(r.get("correct") is False for r in records)
    truncated = [r for r in records if r.get(options.finish_reason_field) == "length"]
    statuses = Counter(str(r.get(options.status_field)) for r in records if options.status_field
                       and r.get(options.status_field) is not None)
    per_source: dict[str, dict[str, Any]] = {}
    for record in records:
        source = str(record.get(options.source_field) or "")
        entry = per_source.setdefault(source, {"records": 0, "scored": 0, "correct": 0, "bad_gold": 0})
        entry["records"] += 1
        entry["scored"] += record.get("correct") is not None
        entry["correct"] += record.get("correct") is True
        entry["bad_gold"] += record.get("correct") is None
    for entry in per_source.values():
        entry["accuracy"] = _rate(entry["correct"], entry["scored"])
    tokens = [r[options.tokens_field] for r in records if isinstance(r.get(options.tokens_field), (int, float))
              and not isinstance(r.get(options.tokens_field), bool)]
    ids = {str(r[options.id_field]) for r in records if options.id_field in r}
    return {
        "records": total,
        "grader": options.grader,
        "problems": len(ids) if ids else None,
        "scored": right + wrong,
        "correct": right,
        "wrong": wrong,
        "accuracy": _rate(right, right + wrong),
        "no_answer": sum(r.get("prediction") is None for r in records),
        "no_answer_rate": _rate(sum(r.get("prediction") is None for r in records), total),
        "truncated": len(truncated),
        "truncated_rate": _rate(len(truncated), total),
        "truncated_correct": sum(r.get("correct") is True for r in truncated),
        "bad_gold": sum(r.get("correct") is None for r in records),
        "timeouts": statuses.get(TIMEOUT, 0),
        "errors": statuses.get(ERROR, 0),
        "statuses": dict(statuses),
        "by_source": dict(sorted(per_source.items())),
        "completion_chars": _stats([len(r.get(options.completion_field) or "") for r in records]),
        "completion_tokens": _stats(tokens),
        "variants": {VARIANT_NAMES["all"]: total, VARIANT_NAMES["correct"]: right,
                     VARIANT_NAMES["incorrect"]: wrong},
    }


def print_summary(summary: dict, console: Any = None, title: str = "Verification") -> None:
    """Render a summary as rich tables (overall, then per source)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    rows = [("records", summary["records"]), ("scored (gold parsed)", summary["scored"]),
            ("accuracy", f"{pct(summary['accuracy'])} ({summary['correct']}/{summary['scored']})"),
            ("no answer", f"{summary['no_answer']} ({pct(summary['no_answer_rate'])})"),
            ("truncated (length)", f"{summary['truncated']} ({pct(summary['truncated_rate'])}), "
                                   f"{summary['truncated_correct']} correct"),
            ("bad gold (correct=null)", summary["bad_gold"]), ("timeouts", summary["timeouts"]),
            ("errors", summary["errors"])]
    for key in ("completion_chars", "completion_tokens"):
        stats = summary.get(key)
        if stats:
            rows.append((key.replace("_", " "), f"mean {stats['mean']}, median {stats['median']}, "
                                                f"p90 {stats['p90']}, max {stats['max']}"))
    rows += [(f"{name} size", size) for name, size in summary["variants"].items()]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    if len(summary["by_source"]) > 1 or any(summary["by_source"]):
        per = Table(title=f"{title}: by source")
        for column in ("source", "records", "scored", "correct", "accuracy", "bad gold"):
            per.add_column(column, justify="left" if column == "source" else "right")
        for source, entry in summary["by_source"].items():
            per.add_row(source or "-", str(entry["records"]), str(entry["scored"]), str(entry["correct"]),
                        pct(entry["accuracy"]), str(entry["bad_gold"]))
        console.print(per)


# ------------------------------------------------------------------------------------------------- files
def verify_file(input_path: str | list[str], output_path: str, options: VerifyOptions, *, overwrite: bool = False,
                split_dir: str | None = None, summary_path: str | None = None, progress: bool = True,
                console: Any = None) -> dict:
    """Verify a JSONL file and write the graded records (plus optional summary JSON and W2SR split files).

    Every output is checked before any work (``OutputExistsError`` unless ``overwrite``) and written atomically:
    a failure leaves no partial file. Bad input raises :class:`InputError` naming the file, line and field.
    Returns the summary dict (with ``input``, ``output``, ``seconds``, ``answers_per_second``, ``options``).
    Several input files (e.g. the shards of ``w2sr generate --num_shards N``) are read in turn, as if concatenated.
    """
    inputs = [input_path] if isinstance(input_path, (str, Path)) else list(input_path)
    if not inputs:
        raise InputError("no input file given", field="input")
    outputs = [Path(output_path)]
    if summary_path:
        outputs.append(Path(summary_path))
    if split_dir:
        outputs += [Path(split_dir) / name for name in SPLIT_FILES.values()]
    sources = [Path(p) for p in inputs]
    for path in outputs:
        check_not_input(path, {f"input[{i}]" if len(sources) > 1 else "input": p for i, p in enumerate(sources)})
        check_output(path, overwrite)
    records: list[dict] = []
    for source in inputs:
        for line, record in iter_jsonl(source, (options.completion_field, options.answer_field)):
            if not isinstance(record[options.completion_field], str):
                raise InputError("expected a string", path=source, line=line, field=options.completion_field)
            records.append(record)
    input_path = inputs[0] if len(inputs) == 1 else [str(p) for p in inputs]
    if not records:
        raise InputError("no records found", path=", ".join(map(str, inputs)))
    started = time.perf_counter()
    verified = verify_records(records, options, progress=progress)
    seconds = time.perf_counter() - started
    summary = summarize(verified, options)
    summary.update(input=input_path if isinstance(input_path, list) else str(input_path), output=str(output_path),
                   seconds=round(seconds, 3),
                   answers_per_second=round(len(records) / seconds, 1) if seconds > 0 else None,
                   options=asdict(options))
    with ExitStack() as stack:  # all renames happen only if every file was written
        handle = stack.enter_context(atomic_open(output_path, overwrite))
        for record in verified:
            handle.write(dumps(record) + "\n")
        if split_dir:
            Path(split_dir).mkdir(parents=True, exist_ok=True)
            wanted = {"all": lambda r: True, "correct": lambda r: r["correct"] is True,
                      "incorrect": lambda r: r["correct"] is False}
            for variant, name in SPLIT_FILES.items():
                split = stack.enter_context(atomic_open(Path(split_dir) / name, overwrite))
                for record in verified:
                    if wanted[variant](record):
                        split.write(dumps(record) + "\n")
        if summary_path:
            import json

            out = stack.enter_context(atomic_open(summary_path, overwrite))
            json.dump(summary, out, indent=2, ensure_ascii=False, default=str)
            out.write("\n")
    print_summary(summary, console, title=f"Verification: {', '.join(Path(p).name for p in inputs)}")
    return summary


# ------------------------------------------------------------------------------------------------- answer classes
_FLOAT_RE = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")


def answer_classes(problems: list[tuple[list[str | None], list[bool | None]]],
                   options: VerifyOptions | None = None) -> list[list[int | None]]:
    """For maj@k: give each sample an answer-class id per problem, equivalent answers sharing one.

    ``problems`` holds, per problem, each sample's extracted answer and verdict. Correct answers are equivalent to
    gold, so they form class 0; distinct wrong answers are compared pairwise with math-verify (plain decimals
    numerically, without a worker) and merged (union-find); samples without an answer get None.
    """
    options = options or VerifyOptions()
    plans = []  # per problem: (distinct wrong answers, their union-find parents)
    pairs: list[tuple[int, int, int]] = []  # (problem, i, j) to ask math-verify about
    for index, (answers, verdicts) in enumerate(problems):
        distinct: list[str] = []
        for answer, ok in zip(answers, verdicts):
            if answer is not None and ok is not True and answer.strip() not in distinct:
                distinct.append(answer.strip())
        parent = list(range(len(distinct)))
        plans.append((distinct, parent))
        for i in range(len(distinct)):
            for j in range(i + 1, len(distinct)):
                a, b = distinct[i], distinct[j]
                if _FLOAT_RE.fullmatch(a) and _FLOAT_RE.fullmatch(b):
                    if float(a) == float(b):
                        _union(parent, i, j)
                else:
                    pairs.append((index, i, j))
    if pairs:
        groups: list[tuple[str, list[str]]] = []
        owners: list[list[tuple[int, int, int]]] = []
        by_first: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
        for pair in pairs:
            by_first[pair[:2]].append(pair)
        for (index, i), members in by_first.items():
            groups.append((plans[index][0][i], [plans[index][0][j] for _, _, j in members]))
            owners.append(members)

        def on_result(group: int, position: int, outcome: str, detail: str) -> None:
            index, i, j = owners[group][position]
            if outcome == CORRECT:
                _union(plans[index][1], i, j)

        if options.workers > 1:
            with WorkerPool(options.workers, options.timeout, options.memory_mb) as pool:
                pool.run(groups, on_result)
        else:
            with _SHARED_LOCK:
                _shared_pool(options).run(groups, on_result)
    out: list[list[int | None]] = []
    for (answers, verdicts), (distinct, parent) in zip(problems, plans):
        classes: list[int | None] = []
        for answer, ok in zip(answers, verdicts):
            if answer is None:
                classes.append(None)
            elif ok is True:
                classes.append(0)
            else:
                classes.append(1 + _find(parent, distinct.index(answer.strip())))
        out.append(classes)
    return out


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _union(parent: list[int], i: int, j: int) -> None:
    a, b = _find(parent, i), _find(parent, j)
    if a != b:
        parent[max(a, b)] = min(a, b)
