"""The vLLM backend against a fake ``vllm`` module, only for what vLLM's CPU build cannot show (the real engine is
tested in ``test_vllm_real.py`` / ``test_vllm_stops.py``, ``make test-vllm``): the GPU path's engine options
(tensor parallelism, ``gpu_memory_utilization``, bfloat16 by default, nf4 -> bitsandbytes, no CPU KV-cache sizing),
several outputs of one request parsed in index order, and the exit-2 message where vLLM is not installed.

The fake mirrors the real API (vllm/outputs.py ``RequestOutput`` / ``CompletionOutput``, ``SamplingParams``
keywords, ``vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)``, ``LLM.generate(prompts,
sampling_params, *, use_tqdm, lora_request)``, ``LLM.llm_engine.add_request/step/has_unfinished_requests``).
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest

from w2sr.generation.base import SamplingOptions
from w2sr.generation.run import build_requests
from w2sr.generation.vllm import VLLMBackend, VLLMOptions, check_vllm, engine_kwargs
from w2sr.records.jsonl import InputError, read_jsonl
from w2sr.records.prompts import PromptOptions
from w2sr.toy import make_problems, write_toy_data

SAMPLING_KEYS = {
    "n",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop_token_ids",
    "skip_special_tokens",
    "detokenize",
    "output_kind",
}


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class RequestOutput:
    def __init__(self, request_id, prompt, prompt_token_ids, prompt_logprobs, outputs, finished, **kwargs):
        self.request_id, self.prompt, self.prompt_token_ids = request_id, prompt, prompt_token_ids
        self.prompt_logprobs, self.outputs, self.finished = prompt_logprobs, outputs, finished


class SamplingParams:
    def __init__(self, **kwargs):
        unknown = set(kwargs) - SAMPLING_KEYS
        assert not unknown, f"not a SamplingParams field: {unknown}"
        self.n = kwargs.get("n", 1)
        self.__dict__.update(kwargs)


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""


def _answer(request_id: str, prompt: dict, params: SamplingParams, lora: LoRARequest | None) -> RequestOutput:
    """Deterministic fake completions: 5 tokens when allowed (stop), else cut at max_tokens (length)."""
    outputs = []
    for index in reversed(range(params.n)):  # out of order: the parser must sort by index
        cut = params.max_tokens < 5
        ids = list(range(params.max_tokens)) if cut else [11, 12, 13, 14, params.stop_token_ids[0]]
        text = f"seed={params.seed} i={index} len={len(prompt['prompt_token_ids'])}" + (" +lora" if lora else "")
        outputs.append(CompletionOutput(index, text, ids, None, None, "length" if cut else "stop"))
    return RequestOutput(request_id, None, prompt["prompt_token_ids"], None, outputs, True)


class FakeEngine:
    def __init__(self) -> None:
        self.model_config = types.SimpleNamespace(max_model_len=10_000)
        self.queue: list[tuple] = []

    def add_request(self, request_id, prompt, params, arrival_time=None, lora_request=None, **kwargs):
        self.queue.append((request_id, prompt, params, lora_request))

    def has_unfinished_requests(self) -> bool:
        return bool(self.queue)

    def step(self) -> list[RequestOutput]:  # finishes the newest requests first, three per step
        done, self.queue = self.queue[-3:], self.queue[:-3]
        unfinished = RequestOutput("other", None, [], None, [], False)
        return [unfinished] + [_answer(*item) for item in reversed(done)]


class LLM:
    instances: list[LLM] = []

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.kwargs = {"model": model, **kwargs}
        self.calls: list[dict] = []
        self.llm_engine = FakeEngine()
        LLM.instances.append(self)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, **kwargs):
        assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts)
        self.calls.append(dict(prompts=prompts, params=sampling_params, lora_request=lora_request))
        return [_answer(str(i), p, s, lora_request) for i, (p, s) in enumerate(zip(prompts, sampling_params))]


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.__spec__ = types.SimpleNamespace(name="vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    LLM.instances.clear()
    return vllm


def _stops(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<|im_start|>")]


def test_several_outputs_of_one_request_are_parsed_in_index_order(fake_vllm, tiny_tokenizer):
    llm = LLM("teacher")
    requests = build_requests(make_problems(2, 0, "test"), tiny_tokenizer, PromptOptions())

    def generate(prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        wide = [SamplingParams(**{**vars(p), "n": 4}) for p in sampling_params]
        return [_answer(str(i), p, s, None) for i, (p, s) in enumerate(zip(prompts, wide))]

    llm.generate = generate
    out = VLLMBackend(llm, tiny_tokenizer, "t", stops=[1]).generate(requests, SamplingOptions())
    assert [[c.text.split()[1] for c in cs] for cs in out] == [["i=0", "i=1", "i=2", "i=3"]] * 2


def test_engine_options_and_adapter_rank(tmp_path, fake_vllm):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 12, "lora_alpha": 24}))
    options = VLLMOptions(
        tensor_parallel_size=2, gpu_memory_utilization=0.8, max_model_len=4096, enable_prefix_caching=True, seed=3
    )
    kwargs = engine_kwargs("base", None, str(adapter), options, dtype="bfloat16")
    assert kwargs == dict(
        model="base",
        tokenizer="base",
        dtype="bfloat16",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.8,
        enable_prefix_caching=True,
        seed=3,
        trust_remote_code=False,
        max_model_len=4096,
        enable_lora=True,
        max_loras=1,
        max_lora_rank=16,
    )
    assert "enable_lora" not in engine_kwargs("base", None, None, VLLMOptions())
    with pytest.raises(InputError, match="would be ignored"):
        engine_kwargs("base", None, str(adapter), VLLMOptions(enable_lora=False))
    with pytest.raises(InputError, match="adapter_config.json"):
        engine_kwargs("base", None, str(tmp_path), VLLMOptions())


def test_without_vllm_exit_2_names_the_extra(monkeypatch, tmp_path):
    from w2sr.cli import main

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(InputError, match=r'pip install "w2sr\[vllm\]"'):
        check_vllm()
    write_toy_data(str(tmp_path / "toy"), n_train=4, n_test=2)
    with pytest.raises(SystemExit) as exit_info:  # the model path does not exist: nothing may load before the check
        main(
            [
                "generate",
                "--model.model_name_or_path",
                str(tmp_path / "no-model"),
                "--backend",
                "vllm",
                "--problems",
                str(tmp_path / "toy" / "test.jsonl"),
                "--output",
                str(tmp_path / "out.jsonl"),
                "--trainer.logger",
                "false",
            ]
        )
    assert exit_info.value.code == 2 and not (tmp_path / "out.jsonl").exists()


def test_gpu_defaults_through_the_cli(fake_vllm, tmp_path, tiny_model, monkeypatch):
    """On a GPU: bfloat16 for ``auto`` (as the HF backend), tensor parallelism and the memory share passed on, no
    KV-cache size of w2sr's own (vLLM's share of GPU memory decides), the adapter's rank."""
    import torch

    from w2sr.cli import main
    from w2sr.generation import vllm as vllm_backend
    from w2sr.generation.vllm_options import resolve_dtype

    with monkeypatch.context() as patched:
        patched.setattr(torch.cuda, "is_available", lambda: True)
        patched.setattr(torch.cuda, "is_bf16_supported", lambda: True)
        assert resolve_dtype("auto", None) == "bfloat16" and resolve_dtype("float32", None) == "float32"
    if not torch.cuda.is_available():
        assert resolve_dtype("auto", None) == "float32"  # a CPU: what the HF backend loads there
    monkeypatch.setattr(vllm_backend, "on_gpu", lambda: True)
    write_toy_data(str(tmp_path / "toy"), n_train=4, n_test=3)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 64}))
    out = tmp_path / "traces.jsonl"
    quiet = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    main(
        [
            "generate",
            "--model.model_name_or_path",
            tiny_model,
            "--backend",
            "vllm",
            "--problems",
            str(tmp_path / "toy" / "train.jsonl"),
            "--output",
            str(out),
            "--sampling.n",
            "2",
            "--sampling.temperature",
            "1.0",
            "--vllm.gpu_memory_utilization",
            "0.5",
            "--vllm.tensor_parallel_size",
            "2",
            *quiet,
        ]
    )
    rows = read_jsonl(out)
    assert [(r["sample"], r["finish_reason"]) for r in rows] == [(0, "stop"), (1, "stop")] * 4
    kwargs = LLM.instances[-1].kwargs
    assert (kwargs["gpu_memory_utilization"], kwargs["tensor_parallel_size"]) == (0.5, 2)
    assert "kv_cache_memory_bytes" not in kwargs and "enforce_eager" not in kwargs
    main(
        [
            "evaluate",
            "--model.model_name_or_path",
            tiny_model,
            "--model.adapter_path",
            str(adapter),
            "--backend",
            "vllm",
            "--problems",
            str(tmp_path / "toy" / "test.jsonl"),
            "--output_dir",
            str(tmp_path / "eval"),
            "--vllm.enforce_eager",
            "true",
            *quiet,
        ]
    )
    assert LLM.instances[-1].kwargs["max_lora_rank"] == 64 and LLM.instances[-1].kwargs["enforce_eager"] is True
    assert all(r["completion"].endswith("+lora") for r in read_jsonl(tmp_path / "eval" / "predictions.jsonl"))


def test_a_cpu_runs_the_engine_eagerly_unless_told_otherwise(fake_vllm, tmp_path, tiny_model, monkeypatch):
    """Issue 28.4: on a CPU vLLM compiled the model at start-up (335 s for SmolLM2-135M against ~1 s eager): w2sr
    asks for eager execution there by default; ``--vllm.enforce_eager false`` still gets compilation."""
    from w2sr.cli import main
    from w2sr.generation import vllm as vllm_backend

    monkeypatch.setattr(vllm_backend, "on_gpu", lambda: False)
    write_toy_data(str(tmp_path / "toy"), n_train=2, n_test=1)
    for extra, eager in (((), True), (("--vllm.enforce_eager", "false"), False)):
        out = tmp_path / f"traces-{eager}.jsonl"
        args = ["--model.model_name_or_path", tiny_model, "--backend", "vllm", "--output", str(out)]
        main(
            [
                "generate",
                *args,
                "--problems",
                str(tmp_path / "toy" / "train.jsonl"),
                *extra,
                "--trainer.logger",
                "false",
            ]
        )
        assert LLM.instances[-1].kwargs["enforce_eager"] is eager and len(read_jsonl(out)) == 2
