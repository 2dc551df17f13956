"""The runs ``w2sr report`` compares: results.json files of ``w2sr evaluate`` read and named, their per-benchmark
accuracy, and their per-problem scores (``problem_scores`` in results.json, else the ``predictions.jsonl`` beside it).

A run is given as ``name=path`` or ``path`` (a results.json or its folder; named by the folder, or by its ``model``
when the folder says nothing); a seed group as ``name=[s0/results.json,s1/results.json,...]`` (one file per seed, in
seed order; unnamed inside a list, ``[[s0/w2sr,s1/w2sr],...]``, it takes the folder name its files share). Bad files
raise :class:`InputError` naming the file and field (exit 2). Exercised by ``pytest tests/evaluation/test_report.py
tests/evaluation/test_report_seeds.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from w2sr.evaluation.metrics import ProblemSamples, problem_scores
from w2sr.records.jsonl import InputError, iter_jsonl


@dataclass
class Run:
    """One results.json with the name it is shown under (per-problem scores are read once, when first needed)."""

    name: str
    path: Path
    results: dict[str, Any]
    scores: dict[str, Any] | None = field(default=None, repr=False)


@dataclass
class Arm:
    """One compared entry: a single run, or a seed group (the same recipe run with K seeds, paired by position with
    the other groups' seeds)."""

    name: str
    runs: list[Run]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def at(self, position: int) -> Run:
        """The run of one seed position (a single run stands for every position)."""
        return self.runs[position] if len(self.runs) > 1 else self.runs[0]


def split_run_specs(items: Sequence[str]) -> list[str]:
    """The run specs of ``--runs``, whatever split them: ``[a,w2sr=[b,c]]``, ``a w2sr=[b,c]``, or the pieces a
    comma split left (``a``, ``w2sr=[b``, ``c]``) -> ``["a", "w2sr=[b,c]"]``; commas inside brackets stay.

    >>> split_run_specs(["[base=b/results.json,w2sr=[s0/r.json,s1/r.json]]"])
    ['base=b/results.json', 'w2sr=[s0/r.json,s1/r.json]']
    >>> split_run_specs(["a", "w2sr=[s0", "s1]"])
    ['a', 'w2sr=[s0,s1]']
    """
    specs: list[str] = []
    for text in _top_level(",".join(item.strip() for item in items if item.strip())):
        if text.startswith("[") and text.endswith("]") and _balanced(text[1:-1]):
            specs += _top_level(text[1:-1])
        else:
            specs.append(text)
    return specs


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets (empty parts dropped); unbalanced brackets raise InputError."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            break
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise InputError(f"unbalanced brackets in {text!r}", field="runs")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_arm(spec: str) -> Arm:
    """``name=path``, ``path``, ``name=[path,path,...]`` (a seed group) or ``[path,...]`` (named by the folder the
    files share)."""
    name, sep, rest = spec.partition("=")
    if not sep or name.startswith("["):
        name, rest = "", spec
    if not (rest.startswith("[") and rest.endswith("]")):
        run = parse_run(spec)
        return Arm(run.name, [run])
    runs = [parse_run(path) for path in _top_level(rest[1:-1])]
    if not runs:
        raise InputError(f"an empty seed group: {spec!r}", field="runs")
    if not name:
        folders = {run.name for run in runs}
        if len(folders) != 1:
            raise InputError(f"name this seed group (name=[...]): its files' folders differ ({spec})", field="runs")
        name = folders.pop()
    for run in runs:
        run.name = name
    return Arm(name, runs)


def load_results(path: str | Path) -> dict[str, Any]:
    """One ``results.json`` (``w2sr evaluate``); errors name the file and the missing field."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise InputError("file not found", path=path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON ({err.msg})", path=path, line=err.lineno) from None
    for key in ("model", "benchmarks"):
        if key not in results:
            raise InputError(
                "missing required field (is this a results.json of `w2sr evaluate`?)", path=path, field=key
            )
    for name, row in results["benchmarks"].items():
        if not isinstance(row, dict) or "avg@n" not in row:
            raise InputError("missing required field", path=path, field=f"benchmarks.{name}.avg@n")
    return results


def parse_run(spec: str) -> Run:
    """``name=path`` or ``path`` (named by its folder, or by its ``model`` when the folder says nothing)."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    file = Path(path)
    file = file / "results.json" if file.is_dir() else file
    results = load_results(file)
    if not name:
        folder = file.parent.name
        name = folder if folder not in ("", ".") else str(results["model"])
    return Run(name, file, results)


def resolve_arm(spec: str | None, arms: list[Arm], role: str) -> Arm | None:
    """``--base`` / ``--reference``: a run name, a path among the runs, or another run or seed group (appended)."""
    if not spec:
        return None
    for arm in arms:
        if spec == arm.name:
            return arm
    for arm in arms:
        if arm.seeds == 1 and Path(spec.partition("=")[2] or spec).resolve() in (
            arm.runs[0].path.resolve(),
            arm.runs[0].path.parent.resolve(),
        ):
            return arm
    if "=" in spec or spec.startswith("[") or Path(spec).exists():
        arm = parse_arm(spec)
        arms.append(arm)
        return arm
    raise InputError(
        f"{spec!r} is neither a run name ({', '.join(a.name for a in arms)}) nor a results file", field=role
    )


def run_scores(run: Run) -> dict[str, Any]:
    """``{benchmark: problem_scores}`` from results.json, else from the predictions.jsonl beside it (None: neither)."""
    if run.scores is None:
        run.scores = {b: row.get("problem_scores") for b, row in run.results["benchmarks"].items()}
        predictions = run.path.parent / "predictions.jsonl"
        if not all(run.scores.values()) and predictions.is_file():
            found = _scores_from_predictions(predictions, run.results)
            run.scores.update({b: found.get(b) for b, v in run.scores.items() if not v})
    return run.scores


def _scores_from_predictions(path: Path, results: dict[str, Any]) -> dict[str, Any]:
    id_field = (results.get("verify") or {}).get("id_field", "id")
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for _, record in iter_jsonl(path):
        grouped.setdefault(str(record.get("benchmark")), {}).setdefault(str(record.get(id_field)), []).append(record)
    out = {}
    for bench, problems in grouped.items():
        rows = []
        for pid, samples in problems.items():
            if all(isinstance(s.get("sample"), int) for s in samples):
                samples.sort(key=lambda s: s["sample"])
            rows.append(
                ProblemSamples(pid, [s.get("correct") for s in samples], [s.get("answer_class") for s in samples])
            )
        out[bench] = problem_scores(rows)
    return out


def problem_values(scores: dict[str, Any] | None, metric: str) -> dict[str, float] | None:
    """``{problem id: score}`` of one metric (``avg@n``, ``pass@K``, ``maj@K``) from a ``problem_scores`` entry."""
    if not scores:
        return None
    if metric == "avg@n":
        values = scores.get("avg@n")
    else:
        family, _, k = metric.partition("@")
        values = (scores.get(f"{family}@k") or {}).get(k)
    return None if values is None else dict(zip(map(str, scores["ids"]), values))


def accuracy(run: Run, benchmark: str, metric: str = "avg@n") -> tuple[float | None, list[float] | None]:
    """A run's accuracy and interval on one benchmark, as its results.json has them."""
    row = run.results["benchmarks"].get(benchmark)
    if not row:
        return None, None
    if metric == "avg@n":
        return row.get("avg@n"), row.get("ci95")
    family, _, k = metric.partition("@")
    return (row.get(f"{family}@k") or {}).get(k), None
