"""ProblemDataModule and its step plan (w2sr.rl.data): problems per step independent of ranks and accumulation,
reuse cycles, resume, prompts as the generation stage renders them."""

from __future__ import annotations

import pytest
from rl_helpers import write_problems

from w2sr.records.jsonl import InputError
from w2sr.rl.data import ProblemDataModule, ProblemStepSampler


def plan(n, batch, accumulate=1, iterations=1, world=1, epoch=0):
    out = []
    for rank in range(world):
        sampler = ProblemStepSampler(n, batch, accumulate, iterations, num_replicas=world, rank=rank, seed=3)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


def test_a_step_has_the_same_problems_on_one_rank_with_accumulation_and_on_two_ranks():
    [one] = plan(10, 4, accumulate=2)  # 4 problems per step, 2 micro-batch items each; 2 problems dropped
    two = plan(10, 2, world=2)  # 2 problems per step and rank
    assert len(one) == 4 and [len(r) for r in two] == [2, 2]
    for step in range(2):
        first, second = one[2 * step], one[2 * step + 1]
        assert first.problems == second.problems and (first.micro, second.micro) == (0, 1) and second.step_end
        assert first.problems == two[0][step].problems + two[1][step].problems
    assert len({p for item in one for p in item.problems}) == 8


def test_reuse_repeats_each_step_and_epochs_reshuffle():
    [items] = plan(6, 2, accumulate=1, iterations=3)
    assert [(i.step, i.iteration) for i in items] == [(s, k) for s in range(3) for k in range(3)]
    assert len({i.problems for i in items[:3]}) == 1
    assert [i.problems for i in plan(6, 2, epoch=0)[0]] != [i.problems for i in plan(6, 2, epoch=1)[0]]


def test_the_sampler_resumes_where_it_stopped():
    sampler = ProblemStepSampler(8, 2, accumulate=2, seed=1)
    full = list(sampler)
    sampler.start_at = 3
    assert list(sampler) == full[3:] and list(sampler) == full  # start_at applies once


def test_prompts_match_the_generation_stage(tmp_path, tiny_model):
    from w2sr.records.prompts import build_messages, render_prompt
    from w2sr.training.loading import load_tokenizer

    problems_file = write_problems(tmp_path / "p.jsonl")
    data = ProblemDataModule(problems=str(problems_file), batch_size=2, tokenizer=tiny_model, val_fraction=0.3)
    data.setup("fit")
    tokenizer = load_tokenizer(tiny_model)
    for item in data.train_problems + data.val_problems:
        text = render_prompt(tokenizer, build_messages(item.problem.problem))
        assert item.prompt_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(data.train_problems) + len(data.val_problems) == 4 and data.val_problems
    [trace] = data.validation_problems()[:1]
    assert trace.prompt == build_messages(trace.problem.problem) and trace.problem.answer is not None
    short = ProblemDataModule(problems=str(problems_file), tokenizer=tiny_model, max_prompt_length=5)
    short.setup("fit")
    assert short.train_problems == [] and short.stats["dropped_long_prompts"] == 4


def test_bad_data_options_name_the_field(tmp_path, tiny_model):
    with pytest.raises(InputError, match="data.batch_size"):
        ProblemDataModule(problems="x.jsonl", batch_size=0)
    data = ProblemDataModule(problems=str(tmp_path / "missing.jsonl"), tokenizer=tiny_model)
    with pytest.raises(InputError, match="missing.jsonl"):
        data.setup("fit")
    with pytest.raises(InputError, match="data.problems"):
        ProblemDataModule(tokenizer=tiny_model).setup("fit")
