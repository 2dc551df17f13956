"""Curate: shape the W2SR / W2SR-P / W2SR-N training sets from verified traces when the teacher answered each problem
more than once (n > 1): exact-duplicate completions removed, over-long traces dropped, one correct trace chosen per
problem for W2SR-P, and at most K traces per problem; every count goes into the verify summary.

With the defaults (``select: all``, no cap, no token limit) the sets are the paper's: every trace (W2SR), every
correct trace (W2SR-P), every wrong one (W2SR-N); only exact duplicates (a problem's identical completions, which a
greedy n = 1 run never has) are removed. Completion lengths are counted in the teacher's tokens: the
``completion_tokens`` field ``w2sr generate`` writes (the teacher's tokenizer counted them as it generated), or,
for records without it, the tokenizer named by ``--tokenizer`` or else by the generation card beside the input
(``<input>.card.json``: its ``model``). Exercised by ``w2sr verify --input traces.jsonl --output verified.jsonl
--split DIR --select shortest_correct --max_per_problem 4 --max_completion_tokens 4096`` and
``pytest tests/verification/test_curate.py``.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from w2sr.records.jsonl import InputError
from w2sr.records.traces import VARIANT_NAMES, Variant, in_variant

Select = Literal["all", "first_correct", "shortest_correct", "random_correct"]
SELECTS = ("all", "first_correct", "shortest_correct", "random_correct")


@dataclass
class Curation:
    """How the split files are made from the verified traces (``w2sr verify --select ... --split DIR``)."""

    select: Select = "all"
    """W2SR-P per problem: ``all`` correct traces (the paper), the ``first_correct`` (lowest sample), the
    ``shortest_correct`` (fewest teacher tokens, then lowest sample) or a ``random_correct`` one (seeded)."""
    max_per_problem: int | None = None
    """keep at most this many traces of a problem in each set (the lowest samples; W2SR-P after ``select``)."""
    max_completion_tokens: int | None = None
    """drop traces whose completion is longer than this many teacher tokens from every set."""
    tokenizer: str | None = None
    """count completion tokens with this tokenizer where a record has no ``completion_tokens`` (default: the model
    of the generation card ``<input>.card.json``)."""
    seed: int = 0
    """seeds ``random_correct`` (per problem, so the choice does not depend on the other problems)."""

    def __post_init__(self) -> None:
        if self.select not in SELECTS:
            raise InputError(f"expected one of {', '.join(SELECTS)}, got {self.select!r}", field="select")
        for name in ("max_per_problem", "max_completion_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"expected an integer >= 1 (or null), got {value!r}", field=name)


def card_model(inputs: list[str]) -> str | None:
    """The teacher named by the generation card beside the (first) input, if there is one."""
    card = Path(f"{inputs[0]}.card.json")
    if not card.is_file():
        return None
    try:
        model = json.loads(card.read_text(encoding="utf-8")).get("model")
    except (json.JSONDecodeError, AttributeError):
        raise InputError("not a generation card (malformed JSON)", path=card) from None
    return model if isinstance(model, str) and model else None


def token_counts(
    records: list[dict[str, Any]], curation: Curation, tokens_field: str, completion_field: str, inputs: list[str]
) -> tuple[list[int | None], str]:
    """Each record's completion length in teacher tokens, and where the counts came from. Records carrying
    ``tokens_field`` use it; the rest are counted with ``curation.tokenizer`` or the card's model (loaded offline,
    ``trust_remote_code`` off). Without a token limit or ``shortest_correct`` nothing is counted that the records do
    not carry."""

    def carried(record: dict[str, Any]) -> int | None:
        value = record.get(tokens_field)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    counts = [carried(r) for r in records]
    missing = [i for i, count in enumerate(counts) if count is None]
    if not missing or (curation.max_completion_tokens is None and curation.select != "shortest_correct"):
        return counts, f"the records' {tokens_field!r} field (the teacher's tokenizer, at generation)"
    name = curation.tokenizer or card_model(inputs)
    if name is None:
        raise InputError(
            f"{len(missing)} records have no {tokens_field!r} field (--max_completion_tokens and shortest_correct "
            "count teacher tokens); name the teacher's tokenizer with --tokenizer (or keep the generation card "
            "<input>.card.json beside the input)",
            field=tokens_field,
        )
    from transformers import AutoTokenizer  # only here: verification stays light without a token limit

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except OSError as err:
        raise InputError(f"cannot load the tokenizer {name!r}: {err}", field="tokenizer") from None
    for i in missing:
        counts[i] = len(tokenizer(records[i][completion_field], add_special_tokens=False)["input_ids"])
    source = "--tokenizer" if curation.tokenizer else "the generation card's model"
    return counts, f"{tokens_field!r} where present, else the tokenizer {name!r} ({source})"


def _sample(record: dict[str, Any], position: int) -> tuple[int, int]:
    sample = record.get("sample")
    return (sample if isinstance(sample, int) and not isinstance(sample, bool) else position, position)


def curate(
    records: list[dict[str, Any]],
    curation: Curation,
    tokens: list[int | None],
    *,
    id_field: str = "id",
    completion_field: str = "completion",
) -> tuple[dict[Variant, list[dict[str, Any]]], dict[str, Any]]:
    """The three training sets (records in input order) and the counts of every step."""
    by_problem: dict[str, list[int]] = defaultdict(list)
    for position, record in enumerate(records):
        by_problem[str(record.get(id_field, f"#{position}"))].append(position)
    duplicates, too_long = 0, 0
    pool: dict[str, list[int]] = {}  # per problem, in sample order: the traces left for the sets
    for problem, positions in by_problem.items():
        seen: set[str] = set()
        left = []
        for position in sorted(positions, key=lambda p: _sample(records[p], p)):
            text = records[position].get(completion_field)
            if text in seen:
                duplicates += 1
                continue
            seen.add(text)
            limit, count = curation.max_completion_tokens, tokens[position]
            if limit is not None and count is not None and count > limit:
                too_long += 1
                continue
            left.append(position)
        pool[problem] = left
    chosen: dict[Variant, set[int]] = {}
    capped: Counter[str] = Counter()
    for variant in VARIANT_NAMES:
        keep: set[int] = set()
        for problem, positions in pool.items():
            members = [p for p in positions if in_variant(records[p].get("correct"), variant)]
            if variant == "correct" and members and curation.select != "all":
                members = [_select(members, curation, tokens, problem)]
            if curation.max_per_problem is not None and len(members) > curation.max_per_problem:
                capped[VARIANT_NAMES[variant]] += len(members) - curation.max_per_problem
                members = members[: curation.max_per_problem]
            keep.update(members)
        chosen[variant] = keep
    correct_left = sum(in_variant(records[p].get("correct"), "correct") for ps in pool.values() for p in ps)
    splits = {v: [r for i, r in enumerate(records) if i in chosen[v]] for v in VARIANT_NAMES}
    counts = {
        "select": curation.select,
        "max_per_problem": curation.max_per_problem,
        "max_completion_tokens": curation.max_completion_tokens,
        "records": len(records),
        "problems": len(by_problem),
        "duplicates_removed": duplicates,
        "over_max_completion_tokens": too_long,
        "correct_removed_by_select": correct_left - len(chosen["correct"]) - capped["W2SR-P"],
        "capped_by_max_per_problem": {name: capped[name] for name in VARIANT_NAMES.values()},
        "problems_with_a_correct_trace": sum(
            any(in_variant(records[p].get("correct"), "correct") for p in ps) for ps in pool.values()
        ),
        "sets": {VARIANT_NAMES[v]: len(splits[v]) for v in VARIANT_NAMES},
    }
    return splits, counts


def _select(members: list[int], curation: Curation, tokens: list[int | None], problem: str) -> int:
    """One correct trace of a problem (``members`` in sample order)."""
    if curation.select == "first_correct":
        return members[0]
    if curation.select == "shortest_correct":
        length: Callable[[int], float] = lambda p: float("inf") if tokens[p] is None else tokens[p]  # noqa: E731
        return min(members, key=lambda p: (length(p), members.index(p)))
    return random.Random(f"{curation.seed}:{problem}").choice(members)
