"""Data-parallel generation: ``--num_shards N --shard_index I`` and ``--trainer.devices 2`` (two Lightning ranks on
CPU with gloo) each give exactly the records of the unsharded run; verify reads several shard files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from w2sr.cli import main
from w2sr.generation.stage import select_shard
from w2sr.records.jsonl import InputError, read_jsonl
from w2sr.toy import make_problems, write_toy_data

REPO = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


def test_select_shard_partitions_in_order():
    problems = make_problems(7, 0, "test")
    shards = [select_shard(problems, 3, i) for i in range(3)]
    assert [p.id for p in shards[1]] == [problems[1].id, problems[4].id]
    assert sorted(p.id for s in shards for p in s) == sorted(p.id for p in problems)
    with pytest.raises(InputError, match="shard_index"):
        select_shard(problems, 2, 2)


def test_two_shards_give_the_unsharded_records_and_verify_reads_both(tmp_path, tiny_model):
    write_toy_data(str(tmp_path / "toy"), n_train=9, n_test=2)
    common = [
        "generate",
        "--model.model_name_or_path",
        tiny_model,
        "--backend",
        "toy",
        "--problems",
        str(tmp_path / "toy" / "train.jsonl"),
        "--sampling.n",
        "2",
        "--sampling.temperature",
        "1.0",
        *QUIET,
    ]
    main([*common, "--output", str(tmp_path / "all.jsonl")])
    for index in (0, 1):
        main(
            [
                *common,
                "--output",
                str(tmp_path / f"shard{index}.jsonl"),
                "--num_shards",
                "2",
                "--shard_index",
                str(index),
            ]
        )
    full = read_jsonl(tmp_path / "all.jsonl")
    shards = [read_jsonl(tmp_path / f"shard{i}.jsonl") for i in (0, 1)]
    assert len(shards[0]) == 10 and len(shards[1]) == 8
    key = lambda r: (r["id"], r["sample"])  # noqa: E731
    assert sorted(shards[0] + shards[1], key=key) == sorted(full, key=key)
    card = json.loads((tmp_path / "shard1.jsonl.card.json").read_text())
    assert (card["num_shards"], card["shard_index"], card["problems"]) == (2, 1, 4)
    main(
        [
            "verify",
            "--input",
            json.dumps([str(tmp_path / "shard0.jsonl"), str(tmp_path / "shard1.jsonl")]),
            "--output",
            str(tmp_path / "verified.jsonl"),
            "--summary",
            str(tmp_path / "summary.json"),
            *QUIET,
        ]
    )
    verified = read_jsonl(tmp_path / "verified.jsonl")
    assert [key(r) for r in verified] == [key(r) for r in shards[0] + shards[1]]
    assert all(r["correct"] in (True, False) for r in verified)
    assert json.loads((tmp_path / "summary.json").read_text())["input"] == [
        str(tmp_path / "shard0.jsonl"),
        str(tmp_path / "shard1.jsonl"),
    ]


@pytest.mark.slow
def test_two_ranks_give_the_unsharded_records(tmp_path, tiny_model):
    """Two gloo ranks launched by Lightning (the DDP subprocess launcher re-runs the command): each takes every
    second problem and writes a part; rank 0 merges the parts into the output in problem order."""
    write_toy_data(str(tmp_path / "toy"), n_train=2, n_test=7)
    problems = str(tmp_path / "toy" / "test.jsonl")
    common = [
        "--model.model_name_or_path",
        tiny_model,
        "--problems",
        problems,
        "--sampling.max_new_tokens",
        "8",
        "--sampling.batch_size",
        "1",
        "--trainer.accelerator",
        "cpu",
        *QUIET,
    ]
    main(["generate", *common, "--output", str(tmp_path / "one.jsonl")])
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "w2sr.cli",
            "generate",
            *common,
            "--output",
            str(tmp_path / "two.jsonl"),
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert read_jsonl(tmp_path / "two.jsonl") == read_jsonl(tmp_path / "one.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir() if "two" in p.name) == ["two.jsonl", "two.jsonl.card.json"]
    card = json.loads((tmp_path / "two.jsonl.card.json").read_text())
    assert card["ranks"] == 2 and card["samples"] == 7 and card["samples_generated"] == 7
    # the cost (issue 25.3): two devices, the tokens of both ranks, N of the model each rank loaded
    cost, one = card["cost"], json.loads((tmp_path / "one.jsonl.card.json").read_text())["cost"]
    assert (cost["devices"], one["devices"]) == (2, 1)
    assert (
        cost["tokens_generated"]
        == one["tokens_generated"]
        == sum(r["completion_tokens"] for r in read_jsonl(tmp_path / "two.jsonl"))
    )
    assert cost["device_seconds"] == pytest.approx(2 * cost["wall_seconds"], rel=1e-12)
    assert cost["parameters"] == one["parameters"] > 0 and cost["flops"] == one["flops"] > 0
