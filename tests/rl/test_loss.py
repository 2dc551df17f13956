"""The GRPO advantages and loss on cases computed by hand (w2sr.rl.advantages, w2sr.rl.loss)."""

from __future__ import annotations

import math

import pytest
import torch

from w2sr.rl.advantages import equal_reward_groups, group_advantages
from w2sr.rl.loss import grpo_loss
from w2sr.rl.rollouts import Rollout, rollout_batch, split_completion

A = 0.5 / (math.sqrt(0.5) + 1e-4)  # a group of two with rewards 1 and 0: mean 0.5, std (Bessel) sqrt(0.5)


def test_group_of_two_rewards_one_and_zero_by_hand():
    assert group_advantages(torch.tensor([1.0, 0.0]), 2).tolist() == pytest.approx([A, -A], rel=1e-6)
    assert group_advantages(torch.tensor([1.0, 0.0]), 2, "none").tolist() == [0.5, -0.5]
    # batch std over both groups [1, 0, 1, 1]: mean of group 1 = 0.5, group 2 = 1; std = 0.5
    batch = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2, "batch").tolist()
    assert batch == pytest.approx([0.5 / (0.5 + 1e-4), -0.5 / (0.5 + 1e-4), 0.0, 0.0], rel=1e-6)


def test_ungradable_completions_get_no_advantage_and_leave_the_baseline():
    adv = group_advantages(torch.tensor([1.0, float("nan"), 0.0, 0.0, float("nan"), 1.0]), 3)
    assert adv[1] == 0 and adv[4] == 0
    assert adv[0] == pytest.approx(A, rel=1e-6) and adv[2] == pytest.approx(-A, rel=1e-6)  # mean of [1, 0] only
    assert torch.equal(equal_reward_groups(torch.tensor([1.0, float("nan"), 1.0, 0.0, 1.0, 0.0]), 3),
                       torch.tensor([True, False]))  # fmt: skip


def test_a_group_with_equal_rewards_has_zero_advantage():
    assert group_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]), 5).abs().max() > 0
    assert group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), 3).abs().max() == 0


def _case():
    """Completion 1 (reward 1) has 2 loss tokens, completion 2 (reward 0) has 1 and a position after its end."""
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    return logps, mask, torch.tensor([A, -A])


@pytest.mark.parametrize(
    "loss_type, value, grads",
    [
        # ratio 1 everywhere (rollouts used once): l_t = -A_i; dl/dlogp_t = -A_i / normaliser
        ("dapo", (-2 * A + A) / 3, [[-A / 3, -A / 3], [A / 3, 0.0]]),
        ("bnpo", (-2 * A + A) / 3, [[-A / 3, -A / 3], [A / 3, 0.0]]),
        ("grpo", (-A + A) / 2, [[-A / 4, -A / 4], [A / 2, 0.0]]),
        ("dr_grpo", (-2 * A + A) / (2 * 4), [[-A / 8, -A / 8], [A / 8, 0.0]]),
    ],
)
def test_loss_and_gradient_by_hand(loss_type, value, grads):
    logps, mask, adv = _case()
    loss, stats = grpo_loss(
        logps, mask, adv, loss_type=loss_type, epsilon=0.2, epsilon_high=0.2, step_tokens=3, max_new_tokens=4
    )
    loss.backward()
    assert float(loss.detach()) == pytest.approx(value, rel=1e-6, abs=1e-9)
    torch.testing.assert_close(logps.grad, torch.tensor(grads), rtol=1e-6, atol=1e-9)
    assert float(stats.tokens) == 3 and float(stats.clipped) == 0


def test_dapo_normalises_by_the_whole_step_over_accumulation_and_ranks():
    """Two micro-batches on each of two ranks: the step's gradient is sum(token losses) / all tokens."""
    logps, mask, adv = _case()
    loss, _ = grpo_loss(
        logps, mask, adv, loss_type="dapo", epsilon=0.2, epsilon_high=0.2, accumulate=2, world_size=2, step_tokens=12
    )
    # Lightning gets accumulate x l_mb, divides it by accumulate; DDP averages over 2 ranks: l_mb / 2 per rank
    assert float(loss) / 2 == pytest.approx((-2 * A + A) / 12, rel=1e-6)


def test_clipping_by_hand_and_clip_higher():
    """Rollouts reused: ratio = exp(logp - old). A positive advantage is clipped above 1 + epsilon_high."""
    logps = torch.tensor([[0.0, 0.0]], requires_grad=True)
    old = torch.log(torch.tensor([[1 / 1.25, 1 / 1.5]]))  # ratios 1.25 and 1.5
    adv = torch.tensor([1.0])
    for high, clipped_grad in ((0.2, [0.0, 0.0]), (0.28, [-1.25 / 2, 0.0])):
        logps.grad = None
        loss, stats = grpo_loss(
            logps, torch.ones(1, 2), adv, loss_type="dapo", epsilon=0.2, epsilon_high=high, old_logps=old, step_tokens=2
        )
        loss.backward()
        expected = -(min(1.25, 1 + high) + (1 + high)) / 2  # min(ratio A, clip(ratio) A), token mean
        assert float(loss) == pytest.approx(expected, rel=1e-6)
        torch.testing.assert_close(logps.grad, torch.tensor([clipped_grad]), rtol=1e-6, atol=1e-9)
        assert float(stats.clipped) == (2 if high == 0.2 else 1)


@pytest.mark.parametrize("correction", [False, True], ids=["k3", "ratio_k3"])
def test_kl_penalty_k3_by_hand(correction):
    logps = torch.tensor([[-1.0]], requires_grad=True)
    ref = torch.tensor([[-1.5]])
    loss, stats = grpo_loss(
        logps, torch.ones(1, 1), torch.tensor([0.0]), loss_type="dapo", epsilon=0.2, epsilon_high=0.2, beta=0.1,
        ref_logps=ref, kl_bias_correction=correction, step_tokens=1,
    )  # fmt: skip
    loss.backward()
    k3 = math.exp(-0.5) + 0.5 - 1
    assert float(loss.detach()) == pytest.approx(0.1 * k3, rel=1e-6) and float(stats.kl) == pytest.approx(k3, rel=1e-6)
    d_k3 = 1 - math.exp(-0.5)  # d k3 / d logp; the ratio (value 1 on-policy) adds k3 itself to the gradient
    assert float(logps.grad) == pytest.approx(0.1 * (d_k3 + (k3 if correction else 0.0)), rel=1e-6)


def test_tokens_after_the_end_of_turn_never_count():
    stop = 99
    ids, truncated = split_completion([5, 6, stop, 7, 8, stop], {stop}, max_new_tokens=10)
    assert ids == [5, 6, stop] and not truncated
    assert split_completion([5, 6, 7], {stop}, max_new_tokens=2) == ([5, 6], True)
    batch = rollout_batch([Rollout([1, 2], ids, False), Rollout([3], [4, stop], False)], pad_id=0)
    assert batch.completion_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    # whatever the model says about positions past the end, loss and gradient do not see it
    logps, mask, adv = _case()
    base, _ = grpo_loss(logps, mask, adv, loss_type="grpo", epsilon=0.2, epsilon_high=0.2)
    base.backward()
    assert float(logps.grad[1, 1]) == 0.0
    changed = logps.detach().clone()
    changed[1, 1] = 50.0
    again, _ = grpo_loss(changed, mask, adv, loss_type="grpo", epsilon=0.2, epsilon_high=0.2)
    assert float(again) == float(base)
