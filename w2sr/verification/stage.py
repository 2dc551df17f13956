"""Stage: ``w2sr verify``'s files: read traces JSONL (one file or several shards), grade them, write the verified
traces, the summary JSON and the W2SR / W2SR-P / W2SR-N split files, all checked first and written atomically.
The summary's ``cost`` is this stage's (``w2sr.records.cost``: CPU seconds of the grading workers included);
``generation_cost`` carries the cards of the generation runs that made the input and ``teacher_cost`` adds them up
with this stage: the whole teacher side of the W2SR arm.

With n > 1 traces per problem the split files are curated (``verification/curate.py``: ``--select``,
``--max_per_problem``, ``--max_completion_tokens``, exact duplicates left out), every count in the summary.

Exercised by ``w2sr verify --input traces.jsonl --output verified.jsonl --split DIR`` and
``pytest tests/verification/test_verify.py tests/verification/test_curate.py``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from w2sr.records.cost import CostTotal, StageClock, StageCost, generation_cost, peak_rss_bytes
from w2sr.records.jsonl import InputError, atomic_open, check_not_input, check_output, dumps, iter_jsonl
from w2sr.records.options import document_fields
from w2sr.records.traces import Variant
from w2sr.verification.curate import Curation, Select, curate, token_counts
from w2sr.verification.grade import VerifyOptions, verify_records
from w2sr.verification.hints import summary_warnings
from w2sr.verification.summary import print_summary, summarize

SPLIT_FILES: dict[Variant, str] = {"all": "w2sr.jsonl", "correct": "w2sr_p.jsonl", "incorrect": "w2sr_n.jsonl"}


@document_fields
@dataclass(kw_only=True)
class VerifyRequest:
    """The options of ``w2sr verify``, declared once: LightningCLI reads them from here
    (``w2sr.runtime.command_line.stage_method``)."""

    input: str | list[str]
    """traces JSONL (``w2sr generate`` output, or any JSONL with the fields named in ``options``); a list
    (``--input [a.jsonl,b.jsonl]``) reads several files, e.g. the shards of one run, in turn."""
    output: str
    """verified traces JSONL to write (adds ``prediction`` and ``correct``)."""
    workers: int | None = None
    """grade over this many processes (shortcut for ``options.workers``)."""
    options: VerifyOptions = field(default_factory=VerifyOptions)
    """workers, time limit, extraction mode and field names."""
    split: str | None = None
    """a folder: also write the W2SR / W2SR-P / W2SR-N training sets there (w2sr.jsonl, w2sr_p.jsonl,
    w2sr_n.jsonl)."""
    summary: str | None = None
    """also write the summary as JSON to this path."""
    overwrite: bool = False
    """replace existing outputs."""
    select: Select = "all"
    """with n > 1 traces per problem, W2SR-P in the ``--split`` files: ``all`` correct traces (the paper's rule),
    the ``first_correct`` (lowest sample), the ``shortest_correct`` (fewest teacher tokens) or a ``random_correct``
    one (seeded by ``select_seed``)."""
    max_per_problem: int | None = None
    """keep at most this many traces of a problem in each ``--split`` file (the lowest samples)."""
    max_completion_tokens: int | None = None
    """leave traces longer than this many teacher tokens out of the ``--split`` files (a record's
    ``completion_tokens``, else counted with ``--tokenizer`` or the generation card's model)."""
    tokenizer: str | None = None
    """the teacher's tokenizer, for records without ``completion_tokens`` (default: the model named by the
    generation card ``<input>.card.json``)."""
    select_seed: int = 0
    """seeds ``--select random_correct``."""

    def __post_init__(self) -> None:
        self.curation()  # bad values exit 2 before any work
        if self.split is None and self.curation() != Curation(seed=self.select_seed):
            raise InputError("the trace selection shapes the --split files: give --split DIR", field="split")

    def curation(self) -> Curation:
        """How the split files are made (exact-duplicate completions are always left out of them)."""
        return Curation(
            select=self.select,
            max_per_problem=self.max_per_problem,
            max_completion_tokens=self.max_completion_tokens,
            tokenizer=self.tokenizer,
            seed=self.select_seed,
        )

    def verify_options(self) -> VerifyOptions:
        """``options`` with ``workers`` applied."""
        return self.options if self.workers is None else dataclasses.replace(self.options, workers=self.workers)


def verify(request: VerifyRequest) -> dict:
    """``w2sr verify``: :func:`verify_file` with the request's options; returns the summary."""
    return verify_file(
        request.input,
        request.output,
        request.verify_options(),
        overwrite=request.overwrite,
        split_dir=request.split,
        summary_path=request.summary,
        curation=request.curation(),
    )


def verify_file(
    input_path: str | list[str],
    output_path: str,
    options: VerifyOptions,
    *,
    overwrite: bool = False,
    split_dir: str | None = None,
    summary_path: str | None = None,
    progress: bool = True,
    console: Any = None,
    curation: Curation | None = None,
) -> dict:
    """Verify a JSONL file and write the graded records (plus optional summary JSON and W2SR split files).

    Every output is checked before any work (``OutputExistsError`` unless ``overwrite``) and written atomically:
    a failure leaves no partial file. Bad input raises :class:`InputError` naming the file, line and field.
    Returns the summary dict (with ``input``, ``output``, ``seconds``, ``answers_per_second``, ``options``, and the
    ``cost`` of this stage, the ``generation_cost`` of the inputs' cards and their ``teacher_cost`` total).
    Several input files (e.g. the shards of ``w2sr generate --num_shards N``) are read in turn, as if concatenated.
    """
    inputs = [input_path] if isinstance(input_path, (str, Path)) else list(input_path)
    if not inputs:
        raise InputError("no input file given", field="input")
    split_paths = {v: Path(split_dir) / name for v, name in SPLIT_FILES.items()} if split_dir else {}
    outputs = [Path(output_path), *([Path(summary_path)] if summary_path else []), *split_paths.values()]
    _check_outputs(inputs, outputs, overwrite)
    clock = StageClock()
    records = read_records(inputs, options)
    curation = curation or Curation()
    if split_dir:  # token counts first: a tokenizer that cannot be found exits 2 before the grading
        tokens, tokens_from = token_counts(records, curation, options.tokens_field, options.completion_field, inputs)
    started = time.perf_counter()
    verified = verify_records(records, options, progress=progress)
    seconds = time.perf_counter() - started
    summary = summarize(verified, options)
    summary.update(
        input=str(inputs[0]) if len(inputs) == 1 else [str(p) for p in inputs],
        output=str(output_path),
        seconds=round(seconds, 3),
        answers_per_second=round(len(records) / seconds, 1) if seconds > 0 else None,
        options=asdict(options),
    )
    summary.update(cost_fields(inputs, clock))
    splits: dict[Variant, list[dict]] = {}
    if split_dir:  # W2SR / -P / -N (records.traces.in_variant), curated (verification.curate)
        id_field, completion_field = options.id_field, options.completion_field
        splits, counts = curate(verified, curation, tokens, id_field=id_field, completion_field=completion_field)
        summary["curation"] = {**counts, "tokens_from": tokens_from}
    split_files = {variant: str(path) for variant, path in split_paths.items()}
    split_sizes = {variant: len(chosen) for variant, chosen in splits.items()}
    summary["warnings"] = summary_warnings(summary, options.grader, split_files, split_sizes)
    write_outputs(verified, output_path, {split_paths[v]: splits[v] for v in splits}, summary, summary_path, overwrite)
    print_summary(summary, console, title=f"Verification: {', '.join(Path(p).name for p in inputs)}")
    for warning in summary["warnings"]:
        print(f"w2sr verify: warning: {warning}", file=sys.stderr, flush=True)
    return summary


def _check_outputs(inputs: list[str | Path], outputs: list[Path], overwrite: bool) -> None:
    """Before any work: no output is an input, none exists unless ``overwrite`` (``check_output``)."""
    sources = [Path(p) for p in inputs]
    named = {f"input[{i}]" if len(sources) > 1 else "input": p for i, p in enumerate(sources)}
    for path in outputs:
        check_not_input(path, named)
        check_output(path, overwrite)


def read_records(inputs: list[str | Path], options: VerifyOptions) -> list[dict]:
    """Every record of the input files in turn (as if concatenated), each with a string completion and an answer
    field; :class:`InputError` naming the file, line and field otherwise, or when there is no record at all."""
    records: list[dict] = []
    for source in inputs:
        for line, record in iter_jsonl(source, (options.completion_field, options.answer_field)):
            if not isinstance(record[options.completion_field], str):
                raise InputError("expected a string", path=source, line=line, field=options.completion_field)
            records.append(record)
    if not records:
        raise InputError("no records found", path=", ".join(map(str, inputs)))
    return records


def cost_fields(inputs: list[str | Path], clock: StageClock) -> dict[str, Any]:
    """The summary's ``cost`` (this stage), ``generation_cost`` (the inputs' generation cards),
    ``generation_cost_missing`` (inputs without one) and ``teacher_cost`` (their total with this stage)."""
    cost = StageCost(
        stage="verify",
        wall_seconds=clock.wall_seconds(),
        cpu_seconds=clock.cpu_seconds(),
        parameters=0,
        peak_memory_bytes=peak_rss_bytes(),
    )
    made_by = {str(p): generation_cost(p) for p in inputs}
    return {
        "cost": cost.to_dict(),
        "generation_cost": [c.to_dict() for c in made_by.values() if c is not None],
        "generation_cost_missing": [p for p, c in made_by.items() if c is None],
        "teacher_cost": asdict(CostTotal.of([*(c for c in made_by.values() if c is not None), cost])),
    }


def write_outputs(
    verified: list[dict],
    output_path: str | Path,
    splits: dict[Path, list[dict]],
    summary: dict[str, Any],
    summary_path: str | None,
    overwrite: bool,
) -> None:
    """The graded records, each split file and the summary, all renamed into place only if every one was written."""
    with ExitStack() as stack:
        handle = stack.enter_context(atomic_open(output_path, overwrite))
        for record in verified:
            handle.write(dumps(record) + "\n")
        for path, chosen in splits.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            split = stack.enter_context(atomic_open(path, overwrite))
            for record in chosen:
                split.write(dumps(record) + "\n")
        if summary_path:
            out = stack.enter_context(atomic_open(summary_path, overwrite))
            json.dump(summary, out, indent=2, ensure_ascii=False, default=str)
            out.write("\n")
