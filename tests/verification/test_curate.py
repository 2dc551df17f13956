"""Trace curation in ``w2sr verify --split`` with n > 1 traces per problem: real traces from ``w2sr generate
--backend toy --sampling.n 6`` (the toy teacher slips on some samples and repeats itself on others), verified by the
real command; every split file is checked against an independent count from the verified traces.
Run: ``pytest tests/verification/test_curate.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from conftest import REPO, run_cli

from w2sr.records.jsonl import read_jsonl, write_jsonl

QUIET = ["--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def traces(tmp_path_factory, tiny_model) -> str:
    folder = tmp_path_factory.mktemp("curate")
    from w2sr.cli import main

    main(
        [
            "generate",
            "--backend",
            "toy",
            "--model.model_name_or_path",
            tiny_model,
            "--problems",
            str(REPO / "data/toy/train.jsonl"),
            "--limit",
            "30",
            "--sampling.n",
            "6",
            "--sampling.temperature",
            "1.0",  # the toy teacher ignores it; n > 1 must sample
            "--sampling.max_new_tokens",
            "256",
            "--output",
            str(folder / "traces.jsonl"),
            *QUIET,
        ]
    )
    # the toy teacher writes one right solution word for word; vary the opening by sample (0 and 3, 1 and 4, 2 and 5
    # alike) so a problem has several distinct right traces of different lengths, and exact duplicates too
    from w2sr.training.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    openings = ["", "Let me think.\n", "Let me think carefully, one step at a time.\n"]
    rows = read_jsonl(folder / "traces.jsonl")
    for row in rows:
        row["completion"] = openings[row["sample"] % 3] + row["completion"]
        ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        row["completion_tokens"] = len(ids) + (row["finish_reason"] == "stop")  # + the end-of-turn, as generated
    write_jsonl(folder / "traces.jsonl", rows, overwrite=True)
    return str(folder / "traces.jsonl")


def _verify(capsys, traces: str, out, *options: str) -> tuple[dict, dict[str, list[dict]]]:
    code, text = run_cli(
        [
            "verify",
            "--input",
            traces,
            "--output",
            str(out / "verified.jsonl"),
            "--split",
            str(out / "split"),
            "--summary",
            str(out / "summary.json"),
            *options,
            *QUIET,
        ],
        capsys,
    )
    assert code == 0, text
    splits = {name: read_jsonl(out / "split" / f"{name}.jsonl") for name in ("w2sr", "w2sr_p", "w2sr_n")}
    return json.loads((out / "summary.json").read_text()), splits


def _by_problem(records: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for record in records:
        grouped[record["id"]].append(record)
    return grouped


def test_default_is_the_papers_rule_with_exact_duplicates_removed(capsys, tmp_path, traces) -> None:
    summary, splits = _verify(capsys, traces, tmp_path)
    verified = read_jsonl(tmp_path / "verified.jsonl")
    assert len(verified) == 180 == summary["records"]  # the verified file keeps every trace
    unique = []
    for problem in _by_problem(verified).values():
        seen = set()
        for record in sorted(problem, key=lambda r: r["sample"]):
            if record["completion"] not in seen:
                seen.add(record["completion"])
                unique.append(record)
    duplicates = len(verified) - len(unique)
    assert duplicates > 0  # the toy teacher writes the same right solution more than once
    curation = summary["curation"]
    assert curation["duplicates_removed"] == duplicates and curation["select"] == "all"
    key = lambda r: (r["id"], r["sample"])  # noqa: E731
    assert sorted(map(key, splits["w2sr"])) == sorted(map(key, unique))
    assert sorted(map(key, splits["w2sr_p"])) == sorted(key(r) for r in unique if r["correct"] is True)
    assert sorted(map(key, splits["w2sr_n"])) == sorted(key(r) for r in unique if r["correct"] is False)
    assert curation["sets"] == {
        "W2SR": len(splits["w2sr"]),
        "W2SR-P": len(splits["w2sr_p"]),
        "W2SR-N": len(splits["w2sr_n"]),
    }


@pytest.mark.parametrize("select", ["first_correct", "shortest_correct", "random_correct"])
def test_one_correct_trace_per_problem(capsys, tmp_path, traces, select: str) -> None:
    summary, splits = _verify(capsys, traces, tmp_path, "--select", select)
    verified = read_jsonl(tmp_path / "verified.jsonl")
    chosen = _by_problem(splits["w2sr_p"])
    correct = {pid: [r for r in rs if r["correct"] is True] for pid, rs in _by_problem(verified).items()}
    assert set(chosen) == {pid for pid, rs in correct.items() if rs}
    assert all(len(rs) == 1 for rs in chosen.values())
    for pid, (record,) in chosen.items():
        ordered = sorted(correct[pid], key=lambda r: r["sample"])
        if select == "first_correct":
            assert record["sample"] == ordered[0]["sample"]
        elif select == "shortest_correct":
            assert record["completion_tokens"] == min(r["completion_tokens"] for r in ordered)
            assert record["sample"] == min(
                r["sample"] for r in ordered if r["completion_tokens"] == record["completion_tokens"]
            )
    assert summary["curation"]["problems_with_a_correct_trace"] == len(chosen)
    assert summary["curation"]["sets"]["W2SR-P"] == len(chosen)
    if select == "random_correct":  # seeded: the same choice again, and not always the first
        again, again_splits = _verify(capsys, traces, tmp_path / "again", "--select", select)
        assert again_splits["w2sr_p"] == splits["w2sr_p"]
        firsts = {pid: min(r["sample"] for r in rs) for pid, rs in correct.items() if rs}
        assert any(rs[0]["sample"] != firsts[pid] for pid, rs in chosen.items())


def test_caps_and_token_limit_with_every_count_in_the_summary(capsys, tmp_path, traces) -> None:
    rows = read_jsonl(traces)
    limit = sorted(r["completion_tokens"] for r in rows)[len(rows) // 2]  # the median: about half are over
    summary, splits = _verify(capsys, traces, tmp_path, "--max_per_problem", "2", "--max_completion_tokens", str(limit))
    verified = read_jsonl(tmp_path / "verified.jsonl")
    curation = summary["curation"]
    left = []
    for problem in _by_problem(verified).values():
        seen = set()
        for record in sorted(problem, key=lambda r: r["sample"]):
            if record["completion"] in seen or record["completion_tokens"] > limit:
                continue
            seen.add(record["completion"])
            left.append(record)
    assert curation["over_max_completion_tokens"] > 0
    assert curation["duplicates_removed"] + curation["over_max_completion_tokens"] + len(left) == len(verified)
    for name, wanted in (
        ("w2sr", lambda r: True),
        ("w2sr_p", lambda r: r["correct"] is True),
        ("w2sr_n", lambda r: r["correct"] is False),
    ):
        expected = [r for problem in _by_problem([r for r in left if wanted(r)]).values() for r in problem[:2]]
        assert sorted((r["id"], r["sample"]) for r in splits[name]) == sorted((r["id"], r["sample"]) for r in expected)
        assert all(r["completion_tokens"] <= limit for r in splits[name])
    assert sum(curation["capped_by_max_per_problem"].values()) > 0
    assert curation["max_per_problem"] == 2 and curation["max_completion_tokens"] == limit


def test_token_counts_come_from_the_teachers_tokenizer_when_records_lack_them(capsys, tmp_path, traces, tiny_model):
    rows = read_jsonl(traces)
    bare = [{k: v for k, v in r.items() if k != "completion_tokens"} for r in rows]
    write_jsonl(tmp_path / "bare.jsonl", bare)
    limit = sorted(r["completion_tokens"] for r in rows)[len(rows) // 2]
    code, text = run_cli(
        [
            "verify",
            "--input",
            str(tmp_path / "bare.jsonl"),
            "--output",
            str(tmp_path / "v.jsonl"),
            "--split",
            str(tmp_path / "s"),
            "--max_completion_tokens",
            str(limit),
            *QUIET,
        ],
        capsys,
    )
    assert code == 2 and "--tokenizer" in text and "completion_tokens" in text  # nothing to count with: exit 2
    summary, splits = _verify(
        capsys, str(tmp_path / "bare.jsonl"), tmp_path, "--max_completion_tokens", str(limit), "--tokenizer", tiny_model
    )
    (tmp_path / "bare.jsonl.card.json").write_text(open(traces + ".card.json", encoding="utf-8").read())  # model
    by_card, card_splits = _verify(
        capsys, str(tmp_path / "bare.jsonl"), tmp_path / "card", "--max_completion_tokens", str(limit)
    )
    # the toy backend counts a finished completion's end-of-turn token too: at most one token apart
    with_field, _ = _verify(capsys, traces, tmp_path / "field", "--max_completion_tokens", str(limit))
    assert abs(
        summary["curation"]["over_max_completion_tokens"] - with_field["curation"]["over_max_completion_tokens"]
    ) <= sum(r["completion_tokens"] == limit + 1 for r in rows)
    same = {k: v for k, v in by_card["curation"].items() if k != "tokens_from"}
    assert same == {k: v for k, v in summary["curation"].items() if k != "tokens_from"} and card_splits == splits
    assert "tokenizer" in summary["curation"]["tokens_from"] and "card" in by_card["curation"]["tokens_from"]
