"""Grading presets: paper (last box only), default (box, "the answer is", ####), lenient (+ last number)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO

from w2sr.records.jsonl import InputError, read_jsonl, write_jsonl
from w2sr.verification.extract import extract_answer
from w2sr.verification.grade import VerifyOptions, verify_completion

CASES = [  # completion, paper, default, lenient
    ("so x = 4, and \\boxed{4}.", "4", "4", "4"),
    ("The answer is 5.", None, "5", "5"),
    ("Answer: 12", None, "12", "12"),
    ("#### 1,234", None, "1,234", "1,234"),
    ("we find 3 + 4 = 7 apples", None, None, "7"),
    ("\\boxed{2}, \\boxed{3}", "3", "2, 3", "2, 3"),  # the paper's rule reads the last box alone
    ("\\boxed{1} then the answer is 9", "1", "1", "1"),  # a box always wins over prose
    ("truncated \\boxed{12", None, None, "12"),
]


@pytest.mark.parametrize("text,paper,default,lenient", CASES)
def test_presets_extract(text, paper, default, lenient):
    assert extract_answer(text, grader="paper") == paper
    assert extract_answer(text, grader="default") == default
    assert extract_answer(text, grader="lenient") == lenient
    assert extract_answer(text, last_number_fallback=True) == lenient  # the old switch still works


def test_options_and_verdicts():
    assert VerifyOptions().grader == "default"
    assert VerifyOptions(last_number_fallback=True).grader == "lenient"
    with pytest.raises(InputError, match="grader"):
        VerifyOptions(grader="strict")
    with pytest.raises(InputError, match="last-number"):
        VerifyOptions(grader="paper", last_number_fallback=True)
    text = "The answer is 5"
    assert verify_completion("5", text, options=VerifyOptions(grader="paper")).correct is False
    assert verify_completion("5", text, options=VerifyOptions(grader="default")).correct is True
    assert verify_completion("7", "3 + 4 = 7", options=VerifyOptions(grader="lenient")).correct is True
    assert (
        verify_completion("B", "so \\boxed{B}", source="gpqa_diamond", options=VerifyOptions(grader="paper")).correct
        is True
    )


def test_grader_recorded_in_every_output(tmp_path):
    from w2sr.cli import main

    source = tmp_path / "in.jsonl"
    write_jsonl(
        source,
        [
            {"id": 1, "completion": "The answer is 5", "answer": "5"},
            {"id": 2, "completion": "\\boxed{6}", "answer": "6"},
        ],
    )
    main(
        [
            "verify",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "v.jsonl"),
            "--summary",
            str(tmp_path / "s.json"),
            "--options.grader",
            "paper",
            "--trainer.logger",
            "false",
        ]
    )
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["grader"] == "paper" and summary["accuracy"] == 0.5
    assert {r["grader"] for r in read_jsonl(tmp_path / "v.jsonl")} == {"paper"}
    for grader, expected in (("paper", 0.5), ("default", 1.0)):
        out = tmp_path / grader
        main(
            [
                "evaluate",
                "--predictions",
                str(source),
                "--output_dir",
                str(out),
                "--options.grader",
                grader,
                "--trainer.logger",
                "false",
            ]
        )
        results = json.loads((out / "results.json").read_text())
        assert results["grader"] == grader and results["benchmarks"]["in"]["avg@n"] == expected
        assert {r["grader"] for r in read_jsonl(out / "predictions.jsonl")} == {grader}


def test_paper_configs_use_the_paper_grader():
    configs = [
        p for p in (REPO / "lightning_configs" / "paper").glob("*.yaml") if p.name.startswith(("evaluate", "verify"))
    ]
    assert len(configs) >= 3
    for path in configs:
        assert yaml.safe_load(path.read_text())["options"]["grader"] == "paper", path
