"""The toy study's task: column addition with carries, solved digit by digit, and its data files and tiny models.

A problem is ``Compute 4729 + 3856.`` (two operands of the same number of digits, ``source: toy-carry``); the gold
solution adds the columns right to left, one line each, then boxes the sum::

    9+6+0=15, carry 1.
    2+5+1=8, carry 0.
    7+8+0=15, carry 1.
    4+3+1=8, carry 0.
    The answer is \\boxed{8585}.

Two writers, without running any model, both per seed (everything but the held-out problems varies with it).
``write_prior_data`` (``--part prior``): the student's side, ``student-init`` (the larger random-init model; both
priors start from it), ``gold_prior.jsonl`` (the student's stand-in for pretraining: gold solutions of *other*
problems of the same task, a share ``prior_steps_share`` of them step by step and the rest an answer line only, which
by default gives the carry-less sum, a shortcut right only where no column carries: so the prior's greedy answer is
a direct, mostly wrong guess while the correct column method is latent: both put there by hand),
``gold_prior_answers.jsonl`` (the same problems, answers only: the control prior, without the latent skill) and
``test.jsonl`` (the held-out problems, the same for every seed). ``write_seed_data`` (``--part seed``):
``teacher-init`` (small), ``pool.jsonl`` (the problems the weak teacher answers and GRPO trains on),
``gold_teacher.jsonl`` (gold traces that train the teacher, on problems outside the pool), ``gold_reference.jsonl``
(gold traces of the pool problems: the gold reference's strong supervision) and ``test.jsonl``. ``write_study_data``
(``--part all``, the default: what ``examples/toy_w2s/run.py`` calls once per seed) writes both into one folder. Both
models share one tokenizer trained on the task's text. Four splits by hash of the problem text keep the test, pool,
teacher-training and prior problems disjoint for any seed.
Exercised by ``python examples/toy_w2s/task.py --output runs/toy_w2s/seed0/data --seed 0`` and ``pytest
tests/cli/test_toy_study.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from w2sr.records.jsonl import OutputExistsError, write_jsonl
from w2sr.records.problems import Problem
from w2sr.records.prompts import PromptOptions, build_messages
from w2sr.records.traces import Trace
from w2sr.toy import IM_END, IM_START, build_tiny_model

SOURCE = "toy-carry"
GOLD_TEACHER = "gold"
TEST_SEED = 12345  # the held-out problems do not depend on the study seed: every seed is scored on the same ones
STUDENT_INIT_SEED = 1000  # the student's init seed is this plus the study seed (the teacher's: the study seed)
SPLITS = ("test", "pool", "teacher", "prior")  # disjoint by sha256(problem text) % 4
PriorAnswers = Literal["carryless", "correct"]  # what the prior's answer-only lines say (TaskSizes.prior_answers)
PRIOR_ANSWERS: tuple[str, ...] = get_args(PriorAnswers)
# The user message is the problem alone (``--prompt.template plain`` in generate/evaluate): the paper's system prompt
# and instruction would more than double every sequence, and the CPU budget is mostly sequence length.
PROMPT = PromptOptions(template="plain")


@dataclass
class TaskSizes:
    """How many problems of which lengths go where (operand digits are drawn uniformly from the ranges)."""

    digits: tuple[int, int] = (3, 4)  # every problem of the study: test, pool, teacher training and the prior
    n_test: int = 300
    n_pool: int = 500
    n_teacher: int = 2000
    n_prior: int = 4000
    prior_steps_share: float = 0.3  # share of the prior's examples with the full solution; the rest: answer only
    # what the prior's answer-only lines say: ``carryless`` (the default since issue 25: the column sums without
    # carrying, a shortcut that is right only where no column carries) or ``correct`` (the true sum; with it, how
    # well the prior learned to answer directly swung from 0% to 99% with the seed)
    prior_answers: PriorAnswers = "carryless"


@dataclass
class ModelSizes:
    """``LlamaConfig`` fields of the two random-init models (see ``w2sr.toy.build_tiny_model``)."""

    teacher: dict[str, int] = field(
        default_factory=lambda: dict(
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=32,
            max_position_embeddings=256,
        )
    )
    student: dict[str, int] = field(
        default_factory=lambda: dict(
            hidden_size=96,
            intermediate_size=288,
            num_hidden_layers=3,
            num_attention_heads=3,
            num_key_value_heads=3,
            head_dim=32,
            max_position_embeddings=256,
        )
    )


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def split_of(text: str) -> str:
    """Which of ``test`` / ``pool`` / ``teacher`` a problem belongs to (a stable hash, not the salted ``hash``)."""
    return SPLITS[int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % len(SPLITS)]


def solution(a: int, b: int) -> str:
    """The gold column-by-column solution of ``a + b`` ending in ``\\boxed{a + b}``."""
    da, db = str(a)[::-1], str(b)[::-1]
    lines, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        total = x + y + carry
        lines.append(f"{x}+{y}+{carry}={total}, carry {total // 10}.")
        carry = total // 10
    return "\n".join(lines) + f"\nThe answer is \\boxed{{{a + b}}}."


def make_problems(n: int, seed: int, split: str | None, digits: tuple[int, int], tag: str) -> list[Problem]:
    """``n`` distinct addition problems with ``digits`` (inclusive range) digits per operand.

    ``split`` keeps only problems hashed into that split (``None``: any split, for the tokenizer's corpus).
    """
    rng, seen, problems = _rng("toy-carry", tag, seed), set(), []
    while len(problems) < n:
        d = rng.randint(*digits)
        low = 10 ** (d - 1) if d > 1 else 0
        a, b = rng.randint(low, 10**d - 1), rng.randint(low, 10**d - 1)
        text = f"Compute {a} + {b}."
        if text in seen or (split is not None and split_of(text) != split):
            continue
        seen.add(text)
        problems.append(
            Problem(
                id=f"{SOURCE}-{tag}-s{seed}-{len(problems):05d}",
                problem=text,
                answer=str(a + b),
                source=SOURCE,
                extras={"digits": d},
            )
        )
    return problems


def operands(problem: Problem) -> tuple[int, int]:
    left, right = problem.problem.removeprefix("Compute ").removesuffix(".").split(" + ")
    return int(left), int(right)


def answer_line(a: int, b: int) -> str:
    """The final line of the gold solution alone: ``The answer is \\boxed{a + b}.``"""
    return solution(a, b).splitlines()[-1]


def carryless_sum(a: int, b: int) -> int:
    """``a + b`` with every column summed mod 10 and no carry (``4729 + 3856`` -> ``7575``): the prior's shortcut,
    right only when no column carries."""
    width = max(len(str(a)), len(str(b)))
    return int("".join(str((int(x) + int(y)) % 10) for x, y in zip(str(a).zfill(width), str(b).zfill(width))))


def shortcut_line(a: int, b: int) -> str:
    """The prior's direct answer: ``The answer is \\boxed{carryless_sum(a, b)}.``"""
    return f"The answer is \\boxed{{{carryless_sum(a, b)}}}."


def gold_traces(
    problems: Sequence[Problem],
    tokenizer: Any,
    steps: Sequence[bool] | None = None,
    answers: PriorAnswers = "correct",
) -> list[dict[str, Any]]:
    """One trace per problem, in the trace schema (what ``w2sr generate`` writes), ``teacher: gold``: gold solutions,
    except the answer-only lines written with ``answers="carryless"``, which hold the prior's shortcut.

    ``steps[i]`` False: problem ``i``'s completion is the answer line only (default: every solution in full), with
    the true sum (``answers="correct"``) or the carry-less shortcut (``"carryless"``, :func:`carryless_sum`)."""
    records = []
    direct = shortcut_line if answers == "carryless" else answer_line
    for i, p in enumerate(problems):
        full = steps is None or steps[i]
        completion = solution(*operands(p)) if full else direct(*operands(p))
        tokens = len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1  # + the end-of-turn token
        records.append(
            Trace(
                problem=p,
                sample=0,
                teacher=GOLD_TEACHER,
                prompt=build_messages(p.problem, PROMPT),
                completion=completion,
                finish_reason="stop",
                completion_tokens=tokens,
            ).to_dict()
        )
    return records


def corpus(seed: int = 0, n: int = 400) -> list[str]:
    """Texts the task's tokenizer is trained on: chat-rendered prompts and gold solutions of both lengths."""
    texts = []
    for digits in ((1, 2), (3, 5)):  # fixed: the tokenizer does not change with TaskSizes
        for p in make_problems(n // 2, seed, None, digits, f"corpus{digits[0]}"):
            messages = build_messages(p.problem, PROMPT)
            chat = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
            texts.append(f"{chat}{IM_START}assistant\n{solution(*operands(p))}{IM_END}\n")
    return texts


def _test_problems(sizes: TaskSizes) -> list[dict[str, Any]]:
    """The held-out problems: the same for every seed and both sides (``TEST_SEED``)."""
    return [p.to_dict() for p in make_problems(sizes.n_test, TEST_SEED, "test", sizes.digits, "test")]


def _prior_side(out: Path, seed: int, sizes: TaskSizes, models: ModelSizes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The student's files (``student-init``, ``gold_prior``, ``gold_prior_answers``, ``test``) and manifest
    fields."""
    from w2sr.training.loading import load_tokenizer

    student_dir = build_tiny_model(
        str(out / "student-init"), seed=seed + STUDENT_INIT_SEED, overwrite=True, corpus=corpus(), **models.student
    )
    tokenizer = load_tokenizer(student_dir)
    prior = make_problems(sizes.n_prior, seed, "prior", sizes.digits, "prior")
    n_steps = round(sizes.prior_steps_share * len(prior))
    shown = [True] * n_steps + [False] * (len(prior) - n_steps)
    _rng("toy-carry", "prior-steps", seed).shuffle(shown)
    files = {
        "test": _test_problems(sizes),
        "gold_prior": gold_traces(prior, tokenizer, shown, sizes.prior_answers),
        "gold_prior_answers": gold_traces(prior, tokenizer, [False] * len(prior), sizes.prior_answers),
    }
    return files, {"student_init": student_dir}


def _seed_side(out: Path, seed: int, sizes: TaskSizes, models: ModelSizes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The teacher's and the pool's files (``teacher-init``, ``pool``, ``gold_teacher``, ``gold_reference``,
    ``test``) and manifest fields."""
    from w2sr.training.loading import load_tokenizer

    teacher_dir = build_tiny_model(
        str(out / "teacher-init"), seed=seed, overwrite=True, corpus=corpus(), **models.teacher
    )
    tokenizer = load_tokenizer(teacher_dir)  # the same tokenizer as the student's: one corpus, one training
    pool = make_problems(sizes.n_pool, seed, "pool", sizes.digits, "pool")
    teacher = make_problems(sizes.n_teacher, seed, "teacher", sizes.digits, "teacher")
    files = {
        "test": _test_problems(sizes),
        "pool": [p.to_dict() for p in pool],
        "gold_teacher": gold_traces(teacher, tokenizer),
        "gold_reference": gold_traces(pool, tokenizer),
    }
    return files, {"teacher_init": teacher_dir}


PARTS = {"prior": (_prior_side,), "seed": (_seed_side,), "all": (_prior_side, _seed_side)}


def write_data(
    output_dir: str | Path,
    seed: int = 0,
    sizes: TaskSizes = TaskSizes(),
    models: ModelSizes = ModelSizes(),
    overwrite: bool = False,
    part: str = "all",
) -> dict[str, Any]:
    """Write one seed's ``part`` (``prior``: the student's side, ``seed``: the teacher's and the pool, ``all``:
    both) into ``output_dir``; return its manifest."""
    out = Path(output_dir)
    if (out / "manifest.json").exists() and not overwrite:
        raise OutputExistsError("output already exists; pass --overwrite to replace it", path=out / "manifest.json")
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict[str, Any]]] = {}
    manifest: dict[str, Any] = {"part": part, "seed": seed, "source": SOURCE, "task": asdict(sizes)}
    manifest["models"] = asdict(models)
    for side in PARTS[part]:
        more, fields = side(out, seed, sizes, models)
        files.update(more)
        manifest.update(fields)
    for name, records in files.items():
        write_jsonl(out / f"{name}.jsonl", records, overwrite=True)
    manifest["files"] = {name: len(records) for name, records in files.items()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def write_prior_data(output_dir: str | Path, seed: int = 0, sizes: TaskSizes = TaskSizes(), **kwargs: Any) -> dict:
    """The student's side of one seed: the random-init student, ``gold_prior.jsonl`` (the latent skill),
    ``gold_prior_answers.jsonl`` (the control) and the held-out ``test.jsonl``; return a manifest."""
    return write_data(output_dir, seed, sizes, part="prior", **kwargs)


def write_seed_data(output_dir: str | Path, seed: int = 0, sizes: TaskSizes = TaskSizes(), **kwargs: Any) -> dict:
    """The teacher's side of one seed: the random-init teacher, ``gold_teacher.jsonl``, the ``pool.jsonl`` the
    teacher answers, ``gold_reference.jsonl`` (gold traces of the pool) and the held-out ``test.jsonl`` (the same
    problems for every seed); return a manifest."""
    return write_data(output_dir, seed, sizes, part="seed", **kwargs)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="folder for the data files and the two init models")
    parser.add_argument(
        "--part",
        choices=tuple(PARTS),
        default="all",
        help="prior: the student's side; seed: the teacher, pool and gold reference; all: both (one seed's data)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the study seed: every file but test.jsonl varies with it")
    parser.add_argument("--n-test", type=int, default=TaskSizes.n_test)
    parser.add_argument("--n-pool", type=int, default=TaskSizes.n_pool)
    parser.add_argument("--n-teacher", type=int, default=TaskSizes.n_teacher)
    parser.add_argument("--n-prior", type=int, default=TaskSizes.n_prior)
    parser.add_argument("--prior-steps-share", type=float, default=TaskSizes.prior_steps_share)
    parser.add_argument(
        "--prior-answers",
        choices=PRIOR_ANSWERS,
        default=TaskSizes.prior_answers,
        help="the prior's answer-only lines: the carry-less shortcut (default) or the true sum",
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    sizes = TaskSizes(
        n_test=args.n_test,
        n_pool=args.n_pool,
        n_teacher=args.n_teacher,
        n_prior=args.n_prior,
        prior_steps_share=args.prior_steps_share,
        prior_answers=args.prior_answers,
    )
    try:
        manifest = write_data(args.output, args.seed, sizes, overwrite=args.overwrite, part=args.part)
    except OutputExistsError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {manifest['files']} to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
