"""Pre-flight memory estimate: parameter count and per-GPU bytes against hand-computed values for Qwen2.5-7B."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from w2sr.training.memory import GIB, ModelShape, Plan, estimate, preflight, strategy_kind, verdict

# config.json of Qwen/Qwen2.5-Math-7B (the fields that fix the size)
QWEN_7B = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}
P = 7_615_616_512  # Qwen2.5-7B's published parameter count
LAYER = 233_057_792  # q,o 3584*3584; k,v 3584*512; qkv bias 3584+2*512; MLP 3*3584*18944; 2 norms 2*3584
ROOT = 1_089_998_336  # embeddings + untied head 2*152064*3584, final norm 3584
LINEAR = 28 * 233_050_624
LORA_16 = 28 * 16 * 90_112  # r * sum(in + out) over q,k,v,o,gate,up,down


def test_parameter_count_of_qwen2_5_7b():
    shape = ModelShape.from_config(QWEN_7B)
    assert shape.layer_params == LAYER and shape.root_params == ROOT
    assert shape.params == P == 28 * LAYER + ROOT
    assert shape.lora_params(16) == LORA_16 == 40_370_176
    tied = ModelShape.from_config({**QWEN_7B, "tie_word_embeddings": True, "model_type": "llama"})
    assert tied.params == P - 152064 * 3584 - 28 * (3584 + 1024)  # no head, no qkv bias


def test_full_finetune_bytes_per_strategy():
    shape = ModelShape.from_config(QWEN_7B)
    base = Plan(finetune="full", micro_batch=2, seq_len=4096, checkpointing=True)
    ddp = estimate(shape, Plan(**{**base.__dict__, "strategy": "ddp", "world_size": 8}))
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (4 * P, 4 * P, 8 * P)  # 16 bytes/param, replicated
    fsdp = estimate(shape, Plan(**{**base.__dict__, "strategy": "fsdp", "world_size": 8}))
    working = 2 * ROOT + 6 * LAYER
    assert fsdp.weights == pytest.approx(4 * P / 8 + working) and fsdp.optimizer == pytest.approx(P)
    assert fsdp.gradients == pytest.approx(P / 2)
    zero2 = estimate(shape, Plan(**{**base.__dict__, "strategy": "zero2", "world_size": 8}))
    assert (zero2.weights, zero2.gradients, zero2.optimizer) == pytest.approx((2 * P, 2 * P / 8, 12 * P / 8))
    offload = estimate(
        shape, Plan(**{**base.__dict__, "strategy": "zero3", "world_size": 8, "offload_optimizer": True})
    )
    assert offload.optimizer == 0 and offload.weights == fsdp.weights
    # activations, checkpointed: 28 layer inputs 2h + one layer 18h + 8I + 6kv, + 12 bytes per logit
    tokens = 2 * 4096
    want = 28 * tokens * 2 * 3584 + tokens * (18 * 3584 + 8 * 18944 + 6 * 512) + tokens * 152064 * 12
    assert fsdp.activations == want == 18_387_828_736
    no_ckpt = estimate(shape, Plan(**{**base.__dict__, "strategy": "fsdp", "world_size": 8, "checkpointing": False}))
    assert no_ckpt.activations == 28 * tokens * 219_136 + tokens * 152064 * 12
    assert fsdp.total / GIB == pytest.approx((P / 2 + P + P / 2 + working + want) / GIB + 2)  # ~39 GiB


def test_lora_and_qlora_bytes():
    shape = ModelShape.from_config(QWEN_7B)
    lora = estimate(shape, Plan(finetune="lora", strategy="single", micro_batch=4, checkpointing=True))
    assert lora.weights == 2 * P + 4 * LORA_16 and lora.optimizer == 8 * LORA_16
    qlora = estimate(
        shape, Plan(finetune="lora", quantization="nf4", strategy="single", micro_batch=4, checkpointing=True)
    )
    assert qlora.weights == pytest.approx(0.516 * LINEAR + 2 * (P - LINEAR) + 4 * LORA_16)
    assert qlora.weights / GIB == pytest.approx(5.317, abs=0.001)  # 5.71e9 bytes; published: QLoRA 7B needs ~6 GB


def test_refusal_with_suggestions_only_when_clearly_too_big():
    shape = ModelShape.from_config(QWEN_7B)
    h100 = 80 * 10**9
    line, refusal = verdict(
        shape, Plan(finetune="full", strategy="ddp", world_size=8, micro_batch=2, checkpointing=True), h100
    )
    assert refusal and "QLoRA" in refusal and "ZeRO-3" in refusal and "CPU offload" in refusal
    assert "twice the GPUs" in refusal and "W2SR_SKIP_MEMORY_CHECK" in refusal
    line, refusal = verdict(
        shape, Plan(finetune="full", strategy="fsdp", world_size=8, micro_batch=2, checkpointing=True), h100
    )
    assert refusal is None and "per GPU" in line and "7.62B" in line
    assert verdict(shape, Plan(finetune="full", strategy="ddp"), None)[1] is None  # no GPU: report only


def test_preflight_reads_config_and_strategy(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    (tmp_path / "config.json").write_text(json.dumps(QWEN_7B))
    hparams = {
        "model_name_or_path": str(tmp_path),
        "finetune": "full",
        "quantization": "none",
        "gradient_checkpointing": False,
        "lora": {"r": 16},
    }
    line, refusal = preflight(hparams, 2, 4096, FSDPStrategy(), 8, 80 * GIB)
    assert refusal is None and "fsdp on 8 device(s)" in line and "activation checkpointing" in line
    _, refusal = preflight(hparams, 2, 4096, DDPStrategy(), 8, 80 * GIB)
    assert refusal is not None
    assert strategy_kind(FSDPStrategy(sharding_strategy="SHARD_GRAD_OP")) == ("fsdp_grad_op", False)
    assert strategy_kind(FSDPStrategy(cpu_offload=True)) == ("fsdp", True)
    assert preflight({"model_name_or_path": "no/such-model"}, 1, 10, DDPStrategy(), 1, None) == (None, None)


def test_memory_module_does_not_import_torch():
    code = "import sys, w2sr.training.memory; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_deepspeed_strategy_kind_from_its_config():
    class DeepSpeedStrategy:  # the attributes Lightning's DeepSpeedStrategy builds in __init__
        def __init__(self, stage, offload):
            zero = {"stage": stage, **({"offload_optimizer": {"device": "cpu"}} if offload else {})}
            self.config = {"zero_optimization": zero}

    assert strategy_kind(DeepSpeedStrategy(3, True)) == ("zero3", True)
    assert strategy_kind(DeepSpeedStrategy(2, False)) == ("zero2", False)


def test_estimate_against_the_peaks_measured_on_an_h200():
    """FIELD_NOTES (seen on one H200): QLoRA of a random Qwen2.5-0.5B shape, r=64 all-linear, batch 8 x 2,048, HF
    naive loss: peak 29.4-30.6 GiB with gradient checkpointing, 48.9 GiB without (torch max allocated, so without
    the CUDA context our overhead term covers). The estimate is within 5% above both."""
    shape = ModelShape.from_config(
        {
            "model_type": "qwen2",
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
        }
    )
    assert shape.params == 494_032_768  # Qwen2.5-0.5B
    for checkpointing, measured in ((True, 30.6), (False, 48.9)):
        est = estimate(
            shape,
            Plan(
                finetune="lora",
                quantization="nf4",
                strategy="single",
                micro_batch=8,
                seq_len=2048,
                checkpointing=checkpointing,
                lora_r=64,
            ),
        )
        allocated = (est.total - est.overhead) / GIB
        assert measured * 0.98 <= allocated <= measured * 1.05, (checkpointing, allocated)


def test_lean_losses_hold_one_chunk_of_logits():
    """``model.loss: chunked`` keeps one chunk's logits, liger its own chunk (power of two of tokens / ceil(V / h)),
    naive all of them: the QLoRA estimate of the H200 case drops from ~30 GiB to a few."""
    from w2sr.training.memory import logit_tokens, resolve_loss

    shape = ModelShape.from_config(
        {
            "model_type": "qwen2",
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
        }
    )
    base = dict(
        finetune="lora",
        quantization="nf4",
        strategy="single",
        micro_batch=8,
        seq_len=2048,
        checkpointing=True,
        lora_r=64,
    )
    assert logit_tokens(shape, Plan(**base)) == 16384
    assert logit_tokens(shape, Plan(**base, loss="chunked", loss_chunk=1024)) == 1024
    assert logit_tokens(shape, Plan(**base, loss="liger")) == 128  # ceil(16384 / ceil(151936 / 896) = 170) = 97
    naive = estimate(shape, Plan(**base)).activations
    chunked = estimate(shape, Plan(**base, loss="chunked", loss_chunk=1024)).activations
    assert naive - chunked == (16384 - 1024) * 151936 * 12
    assert resolve_loss({"loss": "auto"}, on_cuda=False) == "chunked"
    assert resolve_loss({"loss": "naive"}, on_cuda=True) == "naive"
