"""Exports that stop anywhere, on the REAL vLLM engine (issue 26, item 3; ``make test-vllm``): a student merged by
``w2sr export --adapter`` from a base whose only EOS is ``<|endoftext|>`` ends its turn at ``<|im_end|>`` in plain
vLLM with default sampling parameters (``LLM.generate(prompts)``, no w2sr stop list), because the export's
``generation_config.json`` lists it. The base (``conftest.turn_ending_base``) answers ``7<|im_end|>`` and then
repeats ``<|im_end|>``: before the fix the export kept the base's config and wrote ``<|im_end|>`` up to vLLM's
default 16 tokens (seen). Skipped where vLLM is not installed (see test_vllm_real.py)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import skip_without_vllm, turn_ending_base

pytestmark = pytest.mark.vllm
skip_without_vllm()
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")


def test_a_merged_export_ends_the_turn_in_plain_vllm(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM

    from w2sr.cli import main
    from w2sr.records.prompts import build_messages, render_prompt

    base = turn_ending_base(str(tmp_path / "base"))
    adapter = tmp_path / "adapter"  # a fresh LoRA adapter (B = 0): the merge keeps the base's weights
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    peft.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    merged = tmp_path / "merged"
    main(["export", "--adapter", str(adapter), "--output", str(merged), "--dtype", "float32"])

    tokenizer = AutoTokenizer.from_pretrained(merged)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    llm = LLM(model=str(merged), enforce_eager=True, max_model_len=128, kv_cache_memory_bytes=64 << 20)
    try:
        prompt = render_prompt(tokenizer, build_messages("What is 3 + 4?"))
        [output] = llm.generate([prompt], use_tqdm=False)  # vLLM's default sampling parameters
    finally:
        llm.llm_engine.engine_core.shutdown()
    [completion] = output.outputs
    assert tokenizer.convert_ids_to_tokens(list(completion.token_ids)) == ["7", "<|im_end|>"]
    assert completion.finish_reason == "stop" and completion.text == "7"
