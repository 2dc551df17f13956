"""Decontaminate: drop the training problems that a benchmark the student will be scored on already holds.

A training record (a problems file or a traces file, JSONL) is dropped when its problem text, normalised (lower
case, whitespace and LaTeX spacing such as ``\\,`` ``\\;`` ``~`` ``\\quad`` ignored), equals a benchmark
problem's (``exact``), or shares a run of ``ngram`` words with one (``ngram``; 8 by default, as open-r1's
``scripts/decontaminate.py``: word n-grams over the lower-cased, whitespace-normalised text), or, with
``similarity``, is that similar to one (``similar``: a reworded variant; off by default). The kept records are
written unchanged, in input order; a JSON report lists every dropped record with the benchmark item it matched
(benchmark, id, problem, the shared n-gram) and the counts per benchmark. Outputs are checked before any work and
written atomically; the input is never overwritten.

Exercised by ``w2sr decontaminate --input pool.jsonl --output pool.clean.jsonl --benchmarks [math500,aime24]
--benchmark_dir ../shared/data`` and ``pytest tests/records/test_decontaminate.py``; the overlap of MATH train
levels 3-5 with MATH-500 is measured by ``python benchmarks/decontamination.py``.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from w2sr.records.benchmarks import get_benchmark, load_benchmark
from w2sr.records.jsonl import InputError, atomic_open, check_not_input, check_output, dumps, iter_jsonl
from w2sr.records.options import document_fields

__all__ = [
    "BenchmarkIndex",
    "BenchmarkItem",
    "DecontaminateRequest",
    "Match",
    "NORMALISATION",
    "benchmark_items",
    "decontaminate",
    "normalize_problem",
    "word_ngrams",
]

NORMALISATION = (
    "lower case; LaTeX spacing (\\, \\; \\: \\! '\\ ' ~ \\quad \\qquad) and runs of whitespace become one space "
    "(n-grams are runs of these words); the exact check also ignores where the spaces are"
)
_SPACING_RE = re.compile(r"\\(?:[,;:! ]|q?quad(?![A-Za-z]))|~")


def normalize_problem(text: str) -> str:
    """``"Find  $x\\,y$~now"`` -> ``"find $x y$ now"``: the form both checks compare."""
    return " ".join(_SPACING_RE.sub(" ", text).lower().split())


def _exact_key(normalized: str) -> str:
    """``$(0,\\,3)$`` and ``$(0,3)$`` are the same problem: spaces do not count."""
    return normalized.replace(" ", "")


def word_ngrams(normalized: str, n: int) -> list[str]:
    """The runs of ``n`` words of a normalised text, in order (none when it has fewer than ``n`` words)."""
    words = normalized.split()
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)] if n > 0 else []


@dataclass(frozen=True)
class BenchmarkItem:
    """One benchmark problem the training set is checked against."""

    benchmark: str
    """the registry name (``math500``)."""
    id: str
    """the problem's id in the benchmark (MATH-500's ``unique_id``)."""
    problem: str
    """the problem text (GPQA: the question without its options)."""


@dataclass(frozen=True)
class Match:
    """Why a training problem is dropped."""

    kind: Literal["exact", "ngram", "similar"]
    """``exact``: the normalised texts are equal; ``ngram``: they share a run of ``ngram`` words; ``similar``: their
    character-level similarity (``difflib`` ratio) reaches ``--similarity``."""
    item: BenchmarkItem
    """the benchmark problem it matched (for ``ngram``: the one sharing the most n-grams)."""
    ngram: str | None = None
    """the first shared n-gram of the training problem (``ngram`` matches)."""
    shared: int = 0
    """how many of the training problem's distinct n-grams the matched item holds."""
    similarity: float | None = None
    """the ``difflib`` ratio of the two normalised texts (``similar`` matches)."""


class BenchmarkIndex:
    """The benchmark problems by normalised text and by word n-gram."""

    def __init__(self, items: list[BenchmarkItem], ngram: int, similarity: float | None = None) -> None:
        self.items, self.ngram, self.similarity = items, ngram, similarity
        self._matchers: list[difflib.SequenceMatcher] = []
        self.exact: dict[str, int] = {}
        self.ngrams: dict[str, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            normalized = normalize_problem(item.problem)
            self.exact.setdefault(_exact_key(normalized), index)
            for gram in dict.fromkeys(word_ngrams(normalized, ngram)):
                self.ngrams[gram].append(index)

    def match(self, problem: str) -> Match | None:
        """The benchmark item ``problem`` matches, or None (exact matches first, then the most shared n-grams;
        ties go to the earlier benchmark item)."""
        normalized = normalize_problem(problem)
        exact = self.exact.get(_exact_key(normalized))
        if exact is not None:
            return Match("exact", self.items[exact])
        counts: Counter[int] = Counter()
        first: dict[int, str] = {}
        for gram in dict.fromkeys(word_ngrams(normalized, self.ngram)):
            for index in self.ngrams.get(gram, ()):
                counts[index] += 1
                first.setdefault(index, gram)
        if counts:
            index = min(counts, key=lambda i: (-counts[i], i))
            return Match("ngram", self.items[index], first[index], counts[index])
        return self._similar(normalized) if self.similarity is not None else None

    def _similar(self, normalized: str) -> Match | None:
        """The most similar item at or above ``similarity`` (exact: the quick ratios are upper bounds)."""
        if not self._matchers:  # one matcher per item: its index of the item's text is built once
            for item in self.items:
                matcher = difflib.SequenceMatcher(None, autojunk=False)
                matcher.set_seq2(normalize_problem(item.problem))
                self._matchers.append(matcher)
        best, where = 0.0, -1
        for index, matcher in enumerate(self._matchers):
            matcher.set_seq1(normalized)
            if matcher.real_quick_ratio() < self.similarity or matcher.quick_ratio() < self.similarity:
                continue
            ratio = matcher.ratio()
            if ratio >= self.similarity and ratio > best:
                best, where = ratio, index
        return Match("similar", self.items[where], similarity=round(best, 4)) if where >= 0 else None


def benchmark_items(names: list[str], benchmark_dir: str | None = None) -> list[BenchmarkItem]:
    """Every problem of the named benchmarks (local ``DIR/<name>/test.jsonl`` copies, or the hub), as registered."""
    items: list[BenchmarkItem] = []
    for name in names:
        bench = get_benchmark(name)
        for problem in load_benchmark(bench.name, benchmark_dir):
            text = problem.problem
            choices = problem.extras.get("choices")
            if bench.multiple_choice and choices:  # the question as the data set writes it, without the options
                text = text.split("\n\n" + str(choices[0]), 1)[0]
            items.append(BenchmarkItem(bench.name, problem.id, text))
    return items


@document_fields
@dataclass(kw_only=True)
class DecontaminateRequest:
    """The options of ``w2sr decontaminate``, declared once: LightningCLI reads them from here
    (``w2sr.runtime.command_line.stage_method``)."""

    input: str
    """the training problems or traces to check (JSONL: ``w2sr generate`` / ``verify`` output or a problems
    file)."""
    output: str
    """the kept records (JSONL, in input order, unchanged)."""
    benchmarks: list[str] = field(default_factory=list)
    """registered benchmarks to check against, e.g. ``[math500,aime24,amc23]`` (see ``w2sr evaluate``)."""
    benchmark_dir: str | None = None
    """read ``DIR/<name>/test.jsonl`` instead of the hub (the layout of ../shared/data)."""
    ngram: int = 8
    """drop a problem sharing this many consecutive words with a benchmark problem (open-r1's 8); 0: exact
    matches only."""
    similarity: float | None = None
    """also drop a problem whose normalised text is at least this similar to a benchmark problem (character-level
    ``difflib`` ratio, 0-1; 0.8 catches reworded variants with other numbers); off by default: it compares every
    pair (84 CPU-seconds for 5,586 x 500 problems on a 2-core machine)."""
    report: str | None = None
    """the JSON report of every dropped record (default: ``<output>.report.json``)."""
    problem_field: str = "problem"
    """the input field holding the problem text."""
    overwrite: bool = False
    """replace existing outputs."""

    def __post_init__(self) -> None:
        if isinstance(self.benchmarks, str):
            self.benchmarks = [self.benchmarks]
        self.benchmarks = [b.strip() for item in self.benchmarks for b in str(item).split(",") if b.strip()]
        if not self.benchmarks:
            raise InputError("name at least one benchmark, e.g. --benchmarks [math500]", field="benchmarks")
        for name in self.benchmarks:
            get_benchmark(name)  # unknown names: exit 2 listing the known ones
        if isinstance(self.ngram, bool) or not isinstance(self.ngram, int) or self.ngram < 0:
            raise InputError(f"expected an integer >= 0, got {self.ngram!r}", field="ngram")
        if self.similarity is not None and not 0 < self.similarity <= 1:
            raise InputError(f"expected a ratio in (0, 1], got {self.similarity!r}", field="similarity")

    @property
    def report_path(self) -> Path:
        return Path(self.report) if self.report else Path(f"{self.output}.report.json")


def _read(request: DecontaminateRequest) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, record in iter_jsonl(request.input, (request.problem_field,)):
        if not isinstance(record[request.problem_field], str):
            raise InputError("expected a string", path=request.input, line=line, field=request.problem_field)
        rows.append((line, record))
    if not rows:
        raise InputError("no records found", path=request.input)
    return rows


def _dropped_entry(line: int, record: dict[str, Any], match: Match, field_name: str) -> dict[str, Any]:
    entry = {
        "line": line,
        "id": record.get("id", record.get("unique_id")),
        "problem": record[field_name],
        "match": match.kind,
        "benchmark": match.item.benchmark,
        "benchmark_id": match.item.id,
        "benchmark_problem": match.item.problem,
    }
    if "sample" in record:
        entry["sample"] = record["sample"]
    if match.kind == "ngram":
        entry.update(ngram=match.ngram, shared_ngrams=match.shared)
    if match.kind == "similar":
        entry["similarity"] = match.similarity
    return entry


def decontaminate(request: DecontaminateRequest, console: Any = None) -> dict[str, Any]:
    """``w2sr decontaminate``: write the kept records and the report; return the report."""
    started = time.perf_counter()
    for path in (Path(request.output), request.report_path):
        check_not_input(path, {"input": request.input})
        check_output(path, request.overwrite)
    if Path(request.output).resolve() == request.report_path.resolve():
        raise InputError("the report and the output are the same file", path=request.report_path, field="report")
    rows = _read(request)
    items = benchmark_items(request.benchmarks, request.benchmark_dir)
    index = BenchmarkIndex(items, request.ngram, request.similarity)
    matches: dict[str, Match | None] = {}  # one check per distinct problem (a traces file repeats them)
    kept, dropped = [], []
    for line, record in rows:
        text = record[request.problem_field]
        if text not in matches:
            matches[text] = index.match(text)
        match = matches[text]
        if match is None:
            kept.append(record)
        else:
            dropped.append(_dropped_entry(line, record, match, request.problem_field))
    by_benchmark = Counter(entry["benchmark"] for entry in dropped)
    report = {
        "input": str(request.input),
        "output": str(request.output),
        "report": str(request.report_path),
        "benchmarks": {name: sum(item.benchmark == name for item in items) for name in request.benchmarks},
        "benchmark_dir": request.benchmark_dir,
        "ngram": request.ngram,
        "similarity": request.similarity,
        "normalisation": NORMALISATION,
        "records": len(rows),
        "kept": len(kept),
        "dropped": len(dropped),
        "problems": len(matches),
        "problems_dropped": sum(match is not None for match in matches.values()),
        "dropped_by_match": {kind: sum(e["match"] == kind for e in dropped) for kind in ("exact", "ngram", "similar")},
        "dropped_by_benchmark": {name: by_benchmark.get(name, 0) for name in request.benchmarks},
        "seconds": round(time.perf_counter() - started, 3),
        "dropped_records": dropped,
    }
    with ExitStack() as stack:  # both files are renamed into place only if both were written
        handle = stack.enter_context(atomic_open(request.output, request.overwrite))
        for record in kept:
            handle.write(dumps(record) + "\n")
        out = stack.enter_context(atomic_open(request.report_path, request.overwrite))
        json.dump(report, out, indent=2, ensure_ascii=False)
        out.write("\n")
    _print(report, console)
    return report


def _print(report: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console

    console = console or Console(stderr=True)
    per = ", ".join(f"{name} {count}" for name, count in report["dropped_by_benchmark"].items())
    by = report["dropped_by_match"]
    console.print(
        f"w2sr decontaminate: kept {report['kept']} of {report['records']} records, dropped {report['dropped']} "
        f"({by['exact']} exact, {by['ngram']} sharing a {report['ngram']}-gram, {by['similar']} similar; by benchmark: "
        f"{per}); "
        f"report: {report['report']}",
        highlight=False,
        soft_wrap=True,
    )
