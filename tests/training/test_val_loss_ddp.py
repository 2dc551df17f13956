"""``val/loss`` / ``test/loss`` under DDP count every example once (issue 17, item 7): Lightning's DistributedSampler
repeats examples so the ranks get equal shares; ``w2sr.training.batching.EvalSampler`` keeps the equal shares but
the repeated examples count nothing."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from conftest import make_traces

from w2sr.training.batching import BatchCollator, EvalSampler, PlannedDataset
from w2sr.training.datamodule import tokenize_trace


@pytest.mark.parametrize("n,world,batch", [(5, 2, 2), (7, 3, 2), (1, 2, 4), (6, 2, 3)])
def test_eval_sampler_counts_each_example_once_with_equal_batches_per_rank(n, world, batch):
    samplers = [EvalSampler(n, batch, num_replicas=world, rank=r) for r in range(world)]
    per_rank = [list(s) for s in samplers]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])  # no rank waits
    counted = sorted(row[0] for p in per_rank for b in p for row, rep in zip(b.rows, b.repeats) if not rep)
    assert counted == list(range(n))


def test_collator_gives_repeated_examples_no_targets(tiny_tokenizer):
    examples = [tokenize_trace(tiny_tokenizer, t) for t in make_traces(3)]
    [first] = list(EvalSampler(3, 2, num_replicas=2, rank=1))  # positions 1, 3: example 1, then example 0 again
    batch = BatchCollator(tiny_tokenizer.pad_token_id)(PlannedDataset(examples)[first])
    assert first.repeats == (False, True)
    assert int((batch["labels"][1] != -100).sum()) == 0 and batch["num_examples"] == 1
    assert batch["num_targets"] == examples[1].num_targets == int((batch["labels"][:, 1:] != -100).sum())


def _validate_loss(tmp_path, tiny_model, val_file, devices: int) -> float:
    run = tmp_path / f"run{devices}"
    args = [
        "validate",
        "--model.model_name_or_path",
        tiny_model,
        "--model.lora.r",
        "4",
        "--data.train_file",
        str(val_file),
        "--data.val_file",
        str(val_file),
        "--data.batch_size",
        "2",
        "--data.cache_dir",
        "null",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        str(devices),
        "--trainer.strategy",
        "ddp" if devices > 1 else "auto",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(run),
        "--trainer.logger.name",
        "v",
    ]
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "w2sr.cli", *args], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    [metrics] = list(run.glob("v/version_*/metrics.csv"))
    [value] = [float(r["val/loss"]) for r in csv.DictReader(metrics.open()) if r.get("val/loss")]
    return value


@pytest.mark.slow  # two processes, each loading torch + Lightning
def test_val_loss_with_two_ranks_equals_one_rank_on_an_odd_number_of_examples(tmp_path, tiny_model):
    from w2sr.records.jsonl import write_jsonl

    traces = make_traces(5)  # odd: DistributedSampler would repeat the first example on rank 1
    val_file = tmp_path / "val.jsonl"
    write_jsonl(val_file, (t.to_dict() for t in traces))
    one = _validate_loss(tmp_path, tiny_model, val_file, 1)
    two = _validate_loss(tmp_path, tiny_model, val_file, 2)
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
