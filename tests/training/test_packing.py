"""Packing, length grouping and the per-step plan of training batches (w2sr.training.batching)."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_traces

from w2sr.training.batching import BatchCollator, MicroBatch, StepPlanSampler, first_fit_decreasing
from w2sr.training.datamodule import TraceDataModule, tokenize_trace


def test_first_fit_decreasing_fills_rows_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = first_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # first fit: no item of a later bin would have fitted in an earlier bin when it was placed
    assert len(bins) <= 1.25 * sum(lengths) / 128 + 1
    assert first_fit_decreasing([5, 4, 3, 2, 1], 6) == [[0, 4], [1, 3], [2]]
    with pytest.raises(ValueError, match="capacity"):
        first_fit_decreasing([7], 6)


@pytest.mark.parametrize("packing,group", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("world,accumulate", [(1, 3), (2, 2)])
def test_plan_covers_every_example_with_exact_step_tokens(packing, group, world, accumulate):
    rng = random.Random(1)
    n = 37
    lengths = [rng.randint(5, 60) for _ in range(n)]
    targets = [length - rng.randint(1, 4) for length in lengths]
    samplers = [
        StepPlanSampler(
            lengths,
            targets,
            batch_size=2,
            accumulate=accumulate,
            num_replicas=world,
            rank=r,
            seed=3,
            packing=packing,
            max_seq_length=128,
            group_by_length=group,
        )
        for r in range(world)
    ]
    per_rank = [list(s) for s in samplers]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])
    seen = [i for p in per_rank for mb in p for row in mb.rows for i in row]
    assert set(seen) == set(range(n))  # every example, duplicates only to even out the ranks
    steps = 0
    for start in range(0, len(per_rank[0]), accumulate):  # the last window of the epoch may be shorter
        window = [mb for p in per_rank for mb in p[start : start + accumulate]]
        expected = sum(targets[i] for mb in window for row in mb.rows for i in row)
        assert all(mb.step_tokens == expected for mb in window)
        assert all(p[min(start + accumulate, len(p)) - 1].step_end for p in per_rank)
        steps += 1
    assert steps == -(-len(per_rank[0]) // accumulate)
    if packing:
        assert all(sum(lengths[i] for i in row) <= 128 for p in per_rank for mb in p for row in mb.rows)
    # a new epoch reshuffles, the same epoch replays
    assert [mb.rows for mb in samplers[0]] == [mb.rows for mb in per_rank[0]]
    samplers[0].set_epoch(1)
    assert [mb.rows for mb in samplers[0]] != [mb.rows for mb in per_rank[0]]


def test_group_by_length_reduces_padding():
    rng = random.Random(2)
    lengths = [int(rng.lognormvariate(6, 0.8)) + 1 for _ in range(400)]
    pads = {}
    for group in (False, True):
        plan = StepPlanSampler(lengths, lengths, batch_size=8, seed=0, group_by_length=group)
        pads[group] = sum(
            max(lengths[r[0]] for r in mb.rows) * len(mb.rows) - sum(lengths[r[0]] for r in mb.rows) for mb in plan
        )
    assert pads[True] < 0.3 * pads[False]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_each_example_alone(tiny_model, tiny_tokenizer, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn, dtype=torch.float32).eval()
    examples = [tokenize_trace(tiny_tokenizer, t) for t in make_traces(5)]
    collate = BatchCollator(tiny_tokenizer.pad_token_id, packing=True)
    rows = [examples[:3], examples[3:]]
    batch = collate((rows, MicroBatch(rows=(), step_tokens=0, step_end=True)))
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for r, row in enumerate(rows):
            at = 0
            for example in row:
                n = len(example.input_ids)
                alone = model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]
                torch.testing.assert_close(packed[r, at : at + n], alone, rtol=1e-4, atol=1e-4)
                assert batch["labels"][r, at] == -100  # nothing is predicted across the boundary
                assert batch["position_ids"][r, at] == 0
                at += n


def test_packing_datamodule_batches(traces_file, tiny_model):
    dm = TraceDataModule(
        str(traces_file),
        tokenizer=tiny_model,
        val_fraction=0.0,
        batch_size=2,
        packing=True,
        max_seq_length=512,
        cache_dir=None,
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(b["num_examples"] for b in batches) == len(dm.train_examples)
    assert all(b["input_ids"].shape[1] <= 512 and "position_ids" in b for b in batches)
    target = sum(e.num_targets for e in dm.train_examples)
    assert sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches) == target
    padded = TraceDataModule(str(traces_file), tokenizer=tiny_model, val_fraction=0.0, batch_size=2, cache_dir=None)
    padded.setup("fit")
    assert len(batches) < len(padded.train_dataloader()) / 2


def test_sdpa_varlen_packed_logits_equal_each_example_alone(tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from w2sr.training.attention import register

    register()
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model, attn_implementation="sdpa_varlen", dtype=torch.float32
    ).eval()
    examples = [tokenize_trace(tiny_tokenizer, t) for t in make_traces(5)]
    rows = [examples[:3], examples[3:]]
    batch = BatchCollator(tiny_tokenizer.pad_token_id, packing=True)((rows, None))
    padded = BatchCollator(tiny_tokenizer.pad_token_id)(([[e] for e in examples], None))
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        plain = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False).logits
        flat = [e for row in rows for e in row]
        starts = [(r, sum(len(x.input_ids) for x in row[:k])) for r, row in enumerate(rows) for k in range(len(row))]
        for i, (example, (r, at)) in enumerate(zip(flat, starts)):
            n = len(example.input_ids)
            alone = model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[r, at : at + n], alone, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(plain[i, :n], alone, rtol=1e-4, atol=1e-4)  # unpacked: the padding path
