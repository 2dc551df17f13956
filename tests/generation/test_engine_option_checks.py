"""The generation and verification option dataclasses check their values when made (issue 24, item 4): vLLM engine
sizes, prompt templates, grader presets; each refusal names the option (exit 2 on the command line).

Run: ``pytest tests/generation/test_engine_option_checks.py``.
"""

from __future__ import annotations

import pytest

from w2sr.generation.vllm_options import VLLMOptions
from w2sr.records.jsonl import InputError
from w2sr.records.prompts import PromptOptions
from w2sr.verification.grade import VerifyOptions


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: VLLMOptions(tensor_parallel_size=0), "vllm.tensor_parallel_size"),
        (lambda: VLLMOptions(gpu_memory_utilization=0.0), "vllm.gpu_memory_utilization"),
        (lambda: VLLMOptions(gpu_memory_utilization=1.5), "vllm.gpu_memory_utilization"),
        (lambda: VLLMOptions(max_model_len=0), "vllm.max_model_len"),
        (lambda: VLLMOptions(max_num_seqs=-1), "vllm.max_num_seqs"),
        (lambda: PromptOptions(template="nope"), "prompt.template"),
        (lambda: PromptOptions(user="no placeholder"), "prompt.user"),
        (lambda: VerifyOptions(grader="strict"), "options.grader"),
        (lambda: VerifyOptions(mode="letters"), "options.mode"),
    ],
)
def test_bad_values_are_refused_naming_the_option(make, field):
    with pytest.raises(InputError) as err:
        make()
    assert err.value.field == field and field in str(err.value)


def test_edges_that_are_allowed():
    assert VLLMOptions(gpu_memory_utilization=1.0, kv_cache_memory_bytes=4096).gpu_memory_utilization == 1.0
    assert VLLMOptions().max_model_len is None  # unset: the model's context
    assert PromptOptions(template="plain", user="Q: {problem}").resolve().user == "Q: {problem}"
