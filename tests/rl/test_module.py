"""GRPOStudent with a plain Lightning Trainer: learning, no gradient from equal rewards, LoRA, KL, reuse."""

from __future__ import annotations

import json

import pytest
import torch
from rl_helpers import PROBLEMS, fit_grpo, write_problems


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.named_parameters() if v.requires_grad}


def initial(path: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).named_parameters())


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    return max(float((after[k] - before[k].detach()).abs().max()) for k in after)


def test_groups_with_equal_rewards_do_not_move_the_weights(rl_policy, tmp_path):
    """Gold answers the policy never writes: every reward 0, every group equal, beta 0, no weight decay."""
    never = write_problems(tmp_path / "never.jsonl", [{**p, "answer": "1000"} for p in PROBLEMS])
    module = fit_grpo(rl_policy, never, tmp_path / "run", steps=2, lr=0.01)
    assert moved(initial(rl_policy), weights(module)) == 0.0
    metrics = module.trainer.callback_metrics
    assert float(metrics["rl/equal_reward_groups"]) == 1.0 and float(metrics["rl/reward"]) == 0.0
    # the same run on answers the policy does write moves them (the check above can fail)
    module = fit_grpo(rl_policy, write_problems(tmp_path / "p.jsonl"), tmp_path / "run2", steps=2, lr=0.01)
    assert moved(initial(rl_policy), weights(module)) > 1e-4


def sampled_accuracy(model, tokenizer, n: int = 32) -> float:
    """Share of ``n`` sampled answers per problem that are exactly ``\\boxed{gold}`` (fresh seeds)."""
    from w2sr.generation.hf import stop_token_ids
    from w2sr.records.prompts import build_messages, render_prompt
    from w2sr.rl.rollouts import hf_rollouts

    prompts = [
        tokenizer(render_prompt(tokenizer, build_messages(p["problem"])), add_special_tokens=False)["input_ids"]
        for p in PROBLEMS
    ]
    rollouts = hf_rollouts(
        model, tokenizer, [ids for ids in prompts for _ in range(n)], [10_000 + i for i in range(n * len(prompts))],
        stops=stop_token_ids(tokenizer, model), temperature=1.0, top_p=1.0, max_new_tokens=6, batch_size=128,
    )  # fmt: skip
    golds = [p["answer"] for p in PROBLEMS for _ in range(n)]
    texts = [tokenizer.decode(r.completion_ids, skip_special_tokens=True) for r in rollouts]
    return sum(t == f"\\boxed{{{g}}}" for t, g in zip(texts, golds)) / len(texts)


def test_grpo_raises_the_reward_and_logs_its_figures(rl_policy, tmp_path):
    from transformers import AutoModelForCausalLM

    problems = write_problems(tmp_path / "p.jsonl")
    module = fit_grpo(rl_policy, problems, tmp_path / "run", steps=12, batch_size=4, lr=1e-3, num_generations=4)
    assert len(module.reward_history) == 12
    before = sampled_accuracy(AutoModelForCausalLM.from_pretrained(rl_policy, dtype=torch.float32), module.tokenizer)
    after = sampled_accuracy(module.model, module.tokenizer)
    assert after > before + 0.2, (before, after, module.reward_history)
    metrics = module.trainer.callback_metrics
    logged = ("train/loss", "rl/accuracy", "rl/clip_fraction", "rl/kl", "rl/entropy", "rl/response_length")
    for name in logged + ("rl/truncated", "rl/ungradable", "rl/time_rollout", "rl/time_scoring", "rl/time_training"):
        assert name in metrics, name
    assert float(metrics["rl/time_rollout"]) > 0 and float(metrics["rl/time_training"]) > 0
    card = json.loads((tmp_path / "run" / "export" / "w2sr_student.json").read_text())
    assert card["method"] == "grpo" and card["rl"]["grader"] == "paper" and card["global_step"] == 12
    cost = json.loads((tmp_path / "run" / "cost.json").read_text())["cost"]
    assert cost["stage"] == "rl" and set(cost["phases"]) == {"rollout", "scoring", "training"}
    assert all(seconds > 0 for seconds in cost["phases"].values())
    # 12 steps x 16 completions, each trained once (num_iterations 1, truncated ones kept): trained == generated
    assert 12 * 16 <= cost["tokens_generated"] == cost["tokens_trained"] <= 12 * 16 * 6
    n = cost["parameters"]
    assert n == sum(p.numel() for p in module.model.parameters())
    assert cost["flops"] == 2 * n * cost["tokens_generated"] + 6 * n * cost["tokens_trained"]


def test_lora_with_kl_uses_the_base_as_reference_and_full_with_kl_a_frozen_copy(rl_policy, tmp_path):
    problems = write_problems(tmp_path / "p.jsonl")
    lora = fit_grpo(rl_policy, problems, tmp_path / "lora", steps=3, batch_size=4, num_generations=4, finetune="lora",
                    lr=0.01, beta=0.1)  # fmt: skip
    assert not lora._reference and float(lora.trainer.callback_metrics["rl/kl"]) > 0  # adapter moved from base
    full = fit_grpo(rl_policy, problems, tmp_path / "full", steps=3, batch_size=4, num_generations=4, lr=0.01, beta=0.1)
    [reference] = full._reference
    start = initial(rl_policy)
    assert all(torch.equal(p, start[k]) for k, p in reference.named_parameters())  # the frozen initial weights
    assert not any(k.startswith("_reference") for k in full.state_dict())  # not in checkpoints
    assert float(full.trainer.callback_metrics["rl/kl"]) > 0


def test_a_checkpoint_inside_a_reuse_cycle_resumes_exactly(rl_policy, tmp_path):
    """num_iterations 2: steps 1-2 train on generation 0, steps 3-4 on generation 1. Stopped after step 3, the
    checkpoint holds generation 1's rollouts and old log-probs; the resumed step 4 equals the uninterrupted one."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    problems = write_problems(tmp_path / "p.jsonl")
    straight = weights(fit_grpo(rl_policy, problems, tmp_path / "a", steps=4, lr=0.01, num_iterations=2))

    def saver():
        return [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)]

    fit_grpo(rl_policy, problems, tmp_path / "b", steps=3, lr=0.01, num_iterations=2, callbacks=saver())
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3 and checkpoint["w2sr_rl_rollouts"][0]["key"] == (0, 1)
    resumed = fit_grpo(rl_policy, problems, tmp_path / "c", steps=4, lr=0.01, num_iterations=2, callbacks=saver(),
                       ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))  # fmt: skip
    assert resumed.trainer.global_step == 4
    for name, value in weights(resumed).items():
        torch.testing.assert_close(value, straight[name], rtol=0, atol=0, msg=lambda m: f"{name}: {m}")
    # without the rollouts in the checkpoint the resumed step refuses to train on nothing
    del checkpoint["w2sr_rl_rollouts"]
    torch.save(checkpoint, tmp_path / "bare.ckpt")
    with pytest.raises(RuntimeError, match="rollouts of epoch 0 step 1 are missing"):
        fit_grpo(rl_policy, problems, tmp_path / "d", steps=4, lr=0.01, num_iterations=2, callbacks=saver(),
                 ckpt_path=str(tmp_path / "bare.ckpt"))  # fmt: skip
