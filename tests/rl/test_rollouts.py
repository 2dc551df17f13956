"""Rollouts (w2sr.rl.rollouts): per-sample seeds independent of the batch, the sampled distribution, log-probs."""

from __future__ import annotations

import pytest
import torch

from w2sr.generation.hf import stop_token_ids
from w2sr.records.prompts import build_messages, render_prompt
from w2sr.rl.rollouts import hf_rollouts, rollout_batch, token_logps


@pytest.fixture(scope="module")
def policy(rl_policy):
    from transformers import AutoModelForCausalLM

    from w2sr.training.loading import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(rl_policy, dtype=torch.float32), load_tokenizer(rl_policy)


def prompt_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(render_prompt(tokenizer, build_messages(text)), add_special_tokens=False)["input_ids"]


def sample(policy, prompts, seeds, batch_size, max_new_tokens=6, temperature=1.0, top_p=1.0):
    model, tokenizer = policy
    return hf_rollouts(
        model, tokenizer, prompts, seeds, stops=stop_token_ids(tokenizer, model), temperature=temperature,
        top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size,
    )  # fmt: skip


def test_a_completion_depends_on_its_seed_not_on_its_batch(policy):
    _, tokenizer = policy
    a, b = prompt_ids(tokenizer, "Compute 1 + 2."), prompt_ids(tokenizer, "Compute 12 + 34 - 5 + 6.")
    prompts, seeds = [a, b, a, b, a], [11, 12, 13, 14, 15]
    together = sample(policy, prompts, seeds, batch_size=5)
    alone = sample(policy, prompts, seeds, batch_size=1)
    reordered = sample(policy, prompts[::-1] + [b], seeds[::-1] + [99], batch_size=3)[:5][::-1]
    assert [r.completion_ids for r in together] == [r.completion_ids for r in alone]
    assert [r.completion_ids for r in together] == [r.completion_ids for r in reordered]
    other = sample(policy, prompts, [21, 22, 23, 24, 25], batch_size=5)
    assert [r.completion_ids for r in other] != [r.completion_ids for r in together]
    stops = set(stop_token_ids(tokenizer, policy[0]))
    for rollout in together:  # cut after the first stop token, or truncated at the cap
        ends = [i for i, t in enumerate(rollout.completion_ids) if t in stops]
        assert (ends == [len(rollout.completion_ids) - 1]) != rollout.truncated
        assert rollout.truncated == (len(ends) == 0) and len(rollout.completion_ids) <= 6


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.5, 1.0), (0.7, 0.8)])
def test_the_gumbel_sampler_draws_from_softmax_at_the_temperature(temperature, top_p):
    from w2sr.rl.rollouts import GumbelSampler

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 20_000
    sampler = GumbelSampler(list(range(n)), temperature, top_p)
    draws = sampler(torch.zeros(n, 1, dtype=torch.long), logits.expand(n, -1)).argmax(-1)
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1:  # the nucleus: the most likely tokens whose mass first reaches top_p
        keep = int((probs.cumsum(0) < top_p).sum()) + 1
        probs = torch.cat([probs[:keep] / probs[:keep].sum(), torch.zeros(probs.numel() - keep)])
    counts = torch.bincount(draws, minlength=logits.numel()).float()
    sigma = (n * probs * (1 - probs)).sqrt()
    assert ((counts - n * probs).abs() <= 4.5 * sigma + 1).all(), (counts / n, probs)


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0)])  # the temperature / top-p math: the test above
def test_the_sampler_draws_from_softmax_at_the_temperature(policy, temperature, top_p):
    model, tokenizer = policy
    # after "\\boxed{" the policy hesitates between digits (gold or gold + 1): a spread-out distribution
    ids = prompt_ids(tokenizer, "Compute 2 + 2.") + tokenizer("\\boxed{", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float() / temperature
    probs = torch.softmax(logits, -1)
    if top_p < 1:  # the nucleus: the most likely tokens whose mass first reaches top_p
        order = probs.argsort(descending=True)
        keep = order[: int((probs[order].cumsum(0) < top_p).sum()) + 1]
        probs = torch.zeros_like(probs).index_fill(0, keep, 1) * probs
        probs = probs / probs.sum()
    n = 3000
    draws = sample(policy, [ids] * n, list(range(n)), batch_size=n, max_new_tokens=1, temperature=temperature,
                   top_p=top_p)  # fmt: skip
    counts = torch.bincount(torch.tensor([r.completion_ids[0] for r in draws]), minlength=probs.numel()).float()
    assert counts[probs == 0].sum() == 0  # nothing outside the nucleus
    likely = probs > 0.02
    assert int(likely.sum()) >= 2  # not a near-certain token: the temperature matters
    expected = probs[likely] * n
    # each frequent token within 4.5 standard deviations of its binomial count
    assert ((counts[likely] - expected).abs() <= 4.5 * (expected * (1 - probs[likely])).sqrt() + 1).all()


def test_log_probs_of_left_padded_rows_equal_those_of_each_row_alone(policy):
    model, tokenizer = policy
    rollouts = sample(policy, [prompt_ids(tokenizer, "Compute 1 + 2."), prompt_ids(tokenizer, "Compute 9 - 8 + 7.")],
                      [1, 2], batch_size=2)  # fmt: skip
    both, entropy = token_logps(model, rollout_batch(rollouts, tokenizer.pad_token_id), 1.0, entropy=True)
    for row, rollout in enumerate(rollouts):
        alone, _ = token_logps(model, rollout_batch([rollout], tokenizer.pad_token_id), 1.0)
        n = len(rollout.completion_ids)
        torch.testing.assert_close(both[row, :n], alone[0, :n], rtol=1e-5, atol=1e-5)
        # and they are the log-probabilities of the generated tokens: a full forward over prompt + completion
        with torch.no_grad():
            full = model(input_ids=torch.tensor([rollout.prompt_ids + rollout.completion_ids])).logits[0]
        start = len(rollout.prompt_ids) - 1
        reference = torch.log_softmax(full[start : start + n].float(), -1)
        reference = reference.gather(-1, torch.tensor(rollout.completion_ids)[:, None])[:, 0]
        torch.testing.assert_close(alone[0, :n], reference, rtol=1e-5, atol=1e-5)
    assert (entropy > 0).all()
