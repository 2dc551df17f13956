"""The pre-flight memory estimate of a GRPO step (w2sr.training.memory_rl) against hand-computed bytes for
Qwen2.5-Math-7B in the paper config's layout, and the refusal of a step that cannot fit."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from w2sr.training.memory import GIB, LOGIT_BYTES, ModelShape, Plan, estimate
from w2sr.training.memory_rl import RolloutPlan, rl_estimate, rl_preflight, rl_verdict

QWEN_MATH_7B = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}
P = 7_615_616_512
KV_PER_TOKEN = 2 * 28 * 512 * 2  # keys and values, 28 layers, 4 KV heads x 128, bf16
FSDP16 = Plan(finetune="full", strategy="fsdp", world_size=16, checkpointing=True, loss="naive")
PAPER = RolloutPlan(num_generations=8, problems=16, accumulate=64, prompt_tokens=1024, completion_tokens=3072,
                    backend="hf", generation_batch_size=32, reference="copy", reference_bytes=2.0)  # fmt: skip


def test_policy_reference_and_rollouts_by_hand():
    shape = ModelShape.from_config(QWEN_MATH_7B)
    est = rl_estimate(shape, FSDP16, PAPER, 80 * GIB)
    assert PAPER.micro_rows == 2  # 16 problems x 8 completions / 64 micro-batches
    sft = estimate(shape, Plan(**{**FSDP16.__dict__, "micro_batch": 2, "seq_len": 4096}))
    assert (est.weights, est.gradients, est.optimizer) == (sft.weights, sft.gradients, sft.optimizer)
    # the logits of the 3,072 completion tokens of both rows only, not of the prompts
    assert est.activations == sft.activations - 2 * 1024 * 152064 * LOGIT_BYTES
    assert est.reference == 2 * P  # a bf16 copy of the initial weights per GPU
    assert est.rollout == 32 * 4096 * KV_PER_TOKEN  # 32 sequences of prompt + completion in the KV cache
    assert est.total == pytest.approx(sft.total - 2 * 1024 * 152064 * LOGIT_BYTES + 2 * P + 32 * 4096 * KV_PER_TOKEN)
    assert rl_estimate(shape, FSDP16, RolloutPlan(**{**PAPER.__dict__, "reference": "adapter"}), None).reference == 0


def test_a_vllm_engine_with_its_default_share_does_not_fit_beside_training():
    shape = ModelShape.from_config(QWEN_MATH_7B)
    line, refusal = rl_verdict(shape, FSDP16, PAPER, 80 * GIB)
    assert refusal is None and "reference copy" in line and "hf rollouts" in line
    engine = RolloutPlan(**{**PAPER.__dict__, "backend": "vllm"})
    line, refusal = rl_verdict(shape, FSDP16, engine, 80 * GIB)
    assert refusal and "gpu_memory_utilization" in refusal and "rollout 72.0" in line
    shared = RolloutPlan(**{**PAPER.__dict__, "backend": "vllm", "engine_share": 0.3})
    assert rl_verdict(shape, FSDP16, shared, 80 * GIB)[1] is None


def test_rl_preflight_reads_the_run_options(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN_MATH_7B))
    rl = {"num_generations": 8, "max_new_tokens": 3072, "beta": 1e-4, "generation_batch_size": 32}
    model = {"model_name_or_path": str(tmp_path), "finetune": "full", "gradient_checkpointing": True, "rl": rl}
    data = {"batch_size": 16, "max_prompt_length": 1024}
    fsdp = type("W2SRFSDPStrategy", (), {"sharding_strategy": "FULL_SHARD", "cpu_offload": SimpleNamespace()})()
    line, refusal = rl_preflight(model, data, fsdp, 16, 64, "bf16-mixed", 80 * GIB)
    expected = rl_verdict(ModelShape.from_config(QWEN_MATH_7B), FSDP16, PAPER, 80 * GIB)[0]
    assert refusal is None and line == expected
    line, refusal = rl_preflight({**model, "finetune": "full"}, {**data, "batch_size": 64}, fsdp, 16, 4, "bf16-mixed",
                                 80 * GIB)  # fmt: skip
    assert refusal and "accumulate_grad_batches" in refusal  # 128 completions per micro-batch
