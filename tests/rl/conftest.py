"""Fixtures of the RL tests: a tiny policy that answers in the paper's format, and a few problems it can learn.

``rl_policy`` is the session's tiny random-init model (``conftest.tiny_model``'s shape) fine-tuned for a few seconds
to answer ``\\boxed{d}`` with ``d`` the gold answer or the next digit, half and half: its sampled rewards differ
within a group (a learning signal for GRPO) and the verifier grades them for real (the ``paper`` grader)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

# single-digit answers: the policy below learns the format, not arithmetic
PROBLEMS = [
    {"id": "p0", "problem": "Compute 1 + 2.", "answer": "3"},
    {"id": "p1", "problem": "Compute 2 + 2.", "answer": "4"},
    {"id": "p2", "problem": "Compute 6 - 1.", "answer": "5"},
    {"id": "p3", "problem": "Compute 3 + 3.", "answer": "6"},
]


def write_problems(path: Path, problems: list[dict] = PROBLEMS) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return path


@pytest.fixture
def problems_file(tmp_path: Path) -> Path:
    return write_problems(tmp_path / "problems.jsonl")


@pytest.fixture(scope="session")
def rl_policy(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> str:
    """A saved tiny model that answers ``\\boxed{gold}`` or ``\\boxed{gold + 1}`` (about half each) and stops."""
    import torch
    from transformers import AutoModelForCausalLM

    from w2sr.records.prompts import build_messages, render_prompt
    from w2sr.training.loading import load_tokenizer

    path = str(tmp_path_factory.mktemp("models") / "rl-policy")
    tokenizer = load_tokenizer(tiny_model)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.train()
    rng = random.Random(0)
    examples = []
    for problem in PROBLEMS:
        prompt = tokenizer(render_prompt(tokenizer, build_messages(problem["problem"])), add_special_tokens=False)
        for answer in (int(problem["answer"]), int(problem["answer"]) + 1):
            response = tokenizer(f"\\boxed{{{answer}}}<|im_end|>", add_special_tokens=False)["input_ids"]
            ids = prompt["input_ids"] + response
            examples.append((ids, [-100] * len(prompt["input_ids"]) + response))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        batch = rng.sample(examples, 8)
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
