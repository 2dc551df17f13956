"""Agreement with an independent reference (issue 25, item 2): on identical rollouts, rewards and log-probabilities,
w2sr's advantages, loss and gradient equal TRL 1.16's ``GRPOTrainer`` to 1e-6 relative, for every loss aggregation,
with ``beta`` 0 and > 0, with ``epsilon_high``, with and without reused rollouts (old log-probabilities).

TRL's own code computes its side: ``_generate_and_score_completions`` (its rollouts replaced by fixed ones, its reward
function returning fixed rewards, ``None`` for an ungradable answer) makes the advantages and the step's token count,
and ``_compute_loss`` the loss, with the per-token log-probabilities handed to both implementations."""

from __future__ import annotations

import pytest
import torch

from w2sr.rl.advantages import group_advantages
from w2sr.rl.loss import grpo_loss

trl = pytest.importorskip("trl")

PROMPTS = [[5, 6, 7], [5, 6, 7], [8, 9], [8, 9], [10, 11, 12, 13], [10, 11, 12, 13]]
COMPLETIONS = [[20, 21, 22], [23], [24, 25], [26, 27, 28, 29], [30, 31, 32], [33, 34]]
REWARDS = [1.0, 0.0, None, 1.0, 0.0, 0.0]  # group 2 has one gradable answer, group 3 equal rewards
MAX_NEW = 6
GA = 2


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), AutoTokenizer.from_pretrained(
        tiny_model
    )


def trl_trainer(model_and_tokenizer, tmp_path, **config):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = model_and_tokenizer

    def reward(prompts, completions, **kwargs):
        return REWARDS[: len(completions)]

    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        num_generations=2,
        per_device_train_batch_size=len(PROMPTS) // GA,
        gradient_accumulation_steps=GA,
        max_completion_length=MAX_NEW,
        report_to=[],
        use_cpu=True,
        bf16=False,
        **config,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list([{"prompt": "x"}]),
        processing_class=tokenizer,
    )  # fmt: skip
    trainer._generate = lambda prompts: (PROMPTS, COMPLETIONS, None, ["x"] * len(prompts), None, {}, None, None)
    trainer.current_gradient_accumulation_steps = GA
    trainer.model.train()
    return trainer


def scored(trainer):
    return trainer._generate_and_score_completions([{"prompt": str(i // 2)} for i in range(len(PROMPTS))])


def rewards_tensor() -> torch.Tensor:
    return torch.tensor([float("nan") if r is None else r for r in REWARDS])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_trl(model_and_tokenizer, tmp_path, scale):
    trainer = trl_trainer(model_and_tokenizer, tmp_path, scale_rewards=scale)
    theirs = scored(trainer)["advantages"]
    ours = group_advantages(rewards_tensor(), 2, scale)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert ours[2] == 0 and ours[3] == 0 and ours[4] == 0 and ours[5] == 0  # ungradable / lone / equal group


@pytest.mark.parametrize("reuse", [False, True], ids=["once", "reused"])
@pytest.mark.parametrize("epsilon_high", [None, 0.28], ids=["eps", "clip_higher"])
@pytest.mark.parametrize("beta, correction", [(0.0, True), (0.04, True), (0.04, False)], ids=["nokl", "kl", "k3"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_and_gradient_equal_trl(model_and_tokenizer, tmp_path, loss_type, beta, correction, epsilon_high, reuse):
    trainer = trl_trainer(
        model_and_tokenizer, tmp_path, loss_type=loss_type, beta=beta, epsilon_high=epsilon_high,
        use_bias_correction_kl=correction,
    )  # fmt: skip
    inputs = scored(trainer)
    mask = inputs["completion_mask"]
    generator = torch.Generator().manual_seed(0)
    base = -torch.rand(mask.shape, generator=generator) * 3
    old = base + 0.3 * torch.randn(mask.shape, generator=generator) if reuse else None  # ratios far from 1
    ref = base + 0.2 * torch.randn(mask.shape, generator=generator)
    if old is not None:
        inputs["old_per_token_logps"] = old
    if beta:
        inputs["ref_per_token_logps"] = ref
    micro = slice(0, len(PROMPTS) // GA)  # the first micro-batch of the step
    inputs = {
        k: (v[micro] if torch.is_tensor(v) and v.dim() and v.size(0) == len(PROMPTS) else v) for k, v in inputs.items()
    }

    theirs_logps = base[micro].clone().requires_grad_(True)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (theirs_logps, torch.zeros_like(theirs_logps), None)
    theirs = trainer._compute_loss(trainer.model, inputs)
    theirs.backward()

    ours_logps = base[micro].clone().requires_grad_(True)
    ours, _ = grpo_loss(
        ours_logps,
        inputs["completion_mask"],
        inputs["advantages"],
        loss_type=loss_type,
        epsilon=0.2,
        epsilon_high=0.2 if epsilon_high is None else epsilon_high,
        beta=beta,
        old_logps=inputs.get("old_per_token_logps"),
        ref_logps=inputs.get("ref_per_token_logps"),
        kl_bias_correction=correction,
        accumulate=GA,
        world_size=1,
        step_tokens=inputs["num_items_in_batch"],
        max_new_tokens=MAX_NEW,
    )
    ours.backward()
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-6, abs=1e-9)
    torch.testing.assert_close(ours_logps.grad, theirs_logps.grad, rtol=1e-6, atol=1e-9)
    assert theirs_logps.grad.abs().sum() > 0
