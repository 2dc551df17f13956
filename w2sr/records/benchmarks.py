"""The benchmark registry: a name -> where its problems live (hub id, config, split, or ``DIR/<name>/test.jsonl``),
which fields hold the problem, gold answer and id, how the gold is normalised, and the default sampling.

``w2sr evaluate --benchmarks [math500,aime24] --benchmark_dir ../shared/data`` reads the local copies (the layout of
``../shared/data``: one folder per benchmark holding ``test.jsonl``); without ``--benchmark_dir`` the hub dataset is
loaded with ``datasets``. GPQA-Diamond is multiple choice: its four options are shuffled with a seed (per problem)
into A-D in the prompt, which then asks for the letter (``CHOICE_INSTRUCTION``), and the gold answer is the letter.
Its hub set is gated: a failed download is an error that says how to get access. Unknown names exit 2 listing the
known ones. Exercised by ``pytest tests/records/test_benchmark_registry.py tests/verification/test_multiple_choice.py``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2sr.records.jsonl import InputError
from w2sr.records.problems import FieldMap, Problem, load_problems

__all__ = ["Benchmark", "BENCHMARKS", "PAPER_BENCHMARKS", "get_benchmark", "load_benchmark", "benchmark_file"]


@dataclass(frozen=True)
class Benchmark:
    """One registry entry. ``fields`` map the local file (and the hub set unless ``hub_fields`` is given);
    ``gold`` says how the gold answer is read (``w2sr.verification.gold.normalize_gold`` with ``source=name``).
    ``temperature``/``top_p``/``n`` are the default sampling (the paper's: 0.6 / 0.95; more samples for the
    30-problem AIME sets, whose pass@1 is otherwise very noisy)."""

    name: str
    hub_id: str
    split: str
    fields: FieldMap
    gold: str
    config: str | None = None
    hub_fields: FieldMap | None = None
    n: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    multiple_choice: bool = False
    gated: bool = False
    notes: str = ""

    def sampling_defaults(self) -> dict[str, Any]:
        return {"n": self.n, "temperature": self.temperature, "top_p": self.top_p}


# Said after the options: the grader reads a letter (an answer that repeats an option's text is mapped to its letter)
CHOICE_INSTRUCTION = "Answer with the letter (A, B, C or D) of the correct option."
_GPQA_FIELDS = FieldMap(problem="Question", answer="Correct Answer", id="Record ID")
_GPQA_WRONG = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "math500",
            "HuggingFaceH4/MATH-500",
            "test",
            FieldMap("problem", "answer", "unique_id"),
            "the `answer` LaTeX string (surrounding $ dropped)",
            n=4,
        ),
        Benchmark(
            "gsm8k",
            "openai/gsm8k",
            "test",
            FieldMap("question", "answer", None),
            "the text after `####` in `answer`, thousands separators dropped",
            config="main",
            n=1,
        ),
        Benchmark(
            "aime24",
            "HuggingFaceH4/aime_2024",
            "train",
            FieldMap("problem", "answer", "id"),
            "an integer (leading zeros dropped)",
            n=16,
        ),
        Benchmark(
            "aime25",
            "math-ai/aime25",
            "test",
            FieldMap("problem", "answer", "id"),
            "an integer (leading zeros dropped)",
            n=16,
        ),
        Benchmark(
            "amc23",
            "math-ai/amc23",
            "test",
            FieldMap("problem", "answer", "id"),
            "a float such as 27.0, read as the integer 27",
            n=8,
        ),
        Benchmark(
            "olympiadbench",
            "Hothan/OlympiadBench",
            "train",
            FieldMap("question", "final_answer", "id"),
            "the `final_answer` list of $...$ strings joined with commas; the `unit` field is stripped from "
            "predictions",
            config="OE_TO_maths_en_COMP",
            n=1,
        ),
        Benchmark(
            "minerva_math",
            "math-ai/minervamath",
            "test",
            FieldMap("problem", "solution", "idx"),
            "the last \\boxed{} group of `solution`",
            hub_fields=FieldMap("question", "answer", None),
            n=1,
        ),
        Benchmark(
            "gpqa_diamond",
            "Idavidrein/gpqa",
            "train",
            _GPQA_FIELDS,
            "the letter (A-D) of the correct option after a seeded shuffle",
            config="gpqa_diamond",
            n=1,
            multiple_choice=True,
            gated=True,
        ),
    )
}

# The paper's evaluation suite (arXiv 2505.20072, section 4).
PAPER_BENCHMARKS = ("math500", "aime24", "amc23", "gpqa_diamond", "minerva_math", "olympiadbench")


def get_benchmark(name: str) -> Benchmark:
    """The registry entry, or an InputError listing the known names."""
    key = name.strip().lower()
    if key not in BENCHMARKS:
        raise InputError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}", field="benchmarks")
    return BENCHMARKS[key]


def benchmark_file(name: str, benchmark_dir: str | Path) -> Path:
    """``DIR/<name>/test.jsonl``; an InputError when it is missing."""
    path = Path(benchmark_dir) / name / "test.jsonl"
    if not path.is_file():
        raise InputError(
            f"benchmark file for {name!r} not found (expected {benchmark_dir}/<name>/test.jsonl)", path=path
        )
    return path


def _multiple_choice(problems: list[Problem], seed: int) -> list[Problem]:
    """GPQA: shuffle the correct and three incorrect options into A-D (seeded per problem id), ask for the letter;
    gold = the letter."""
    out = []
    for problem in problems:
        options = [problem.answer] + [problem.extras.get(key) for key in _GPQA_WRONG]
        if any(not isinstance(o, str) or not o.strip() for o in options):
            raise InputError(
                f"problem {problem.id}: a multiple-choice record needs non-empty 'Correct Answer' "
                f"and {', '.join(repr(k) for k in _GPQA_WRONG)}",
                field="Incorrect Answer",
            )
        order = list(range(4))
        random.Random(f"{seed}:{problem.id}").shuffle(order)
        letters = "ABCD"
        lines = [f"{letters[i]}) {options[j].strip()}" for i, j in enumerate(order)]
        gold = letters[order.index(0)]
        text = problem.problem.strip() + "\n\n" + "\n".join(lines) + "\n\n" + CHOICE_INSTRUCTION
        extras = {k: v for k, v in problem.extras.items() if k not in _GPQA_WRONG}
        extras["choices"] = lines
        out.append(Problem(id=problem.id, problem=text, answer=gold, source=problem.source, extras=extras))
    return out


def load_benchmark(
    name: str, benchmark_dir: str | Path | None = None, *, limit: int | None = None, seed: int = 0
) -> list[Problem]:
    """The problems of a registered benchmark, with ``source`` set to its name (which selects the gold rule)."""
    bench = get_benchmark(name)
    if benchmark_dir is not None:
        path = benchmark_file(bench.name, benchmark_dir)
        problems = load_problems(str(path), fields=bench.fields, name=bench.name, limit=limit)
    else:
        try:
            problems = load_problems(
                bench.hub_id,
                split=bench.split,
                subset=bench.config,
                name=bench.name,
                fields=bench.hub_fields or bench.fields,
                limit=limit,
            )
        except Exception as err:  # noqa: BLE001 - datasets raises many types for offline / gated / missing sets
            # (w2sr.records.problems already turns the usual ones into an InputError: add the benchmark's context to it)
            hint = (
                (
                    f"; {bench.hub_id} is gated: accept its terms on https://huggingface.co/datasets/{bench.hub_id} "
                    "and log in (`huggingface-cli login` or HF_TOKEN)"
                )
                if bench.gated
                else ""
            )
            raise InputError(
                f"cannot load benchmark {bench.name!r} from the hub ({bench.hub_id}, config "
                f"{bench.config}, split {bench.split}): {type(err).__name__}: {str(err)[:300]}{hint}; "
                f"or pass --benchmark_dir DIR with DIR/{bench.name}/test.jsonl",
                field="benchmarks",
            ) from None
    for problem in problems:
        problem.source = bench.name
    if bench.multiple_choice:
        problems = _multiple_choice(problems, seed)
    return problems


def describe() -> list[dict[str, Any]]:
    """The registry as rows (for docs and ``--help`` text)."""
    return [
        {
            "name": b.name,
            "hub_id": b.hub_id,
            "config": b.config,
            "split": b.split,
            "gold": b.gold,
            **b.sampling_defaults(),
            "gated": b.gated,
        }
        for b in BENCHMARKS.values()
    ]
