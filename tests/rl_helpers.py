"""Helpers of the RL tests (tests/rl): a tiny policy that answers in the paper's format, a few problems it can learn,
and a GRPO fit with a plain Lightning Trainer.

``build_rl_policy`` (the session fixture ``conftest.rl_policy``) fine-tunes the session's tiny random-init model
for a few seconds to answer ``\\boxed{d}`` with ``d`` the gold answer or the next digit, about half and half: its
sampled rewards differ within a group (a learning signal for GRPO) and the verifier grades them for real (the
``paper`` grader)."""

from __future__ import annotations

import json
import random
from pathlib import Path

STEPS = 200  # supervised steps of the policy: ~45% of its sampled answers are right (60 steps: ~20%, not per problem)
# single-digit answers: the policy learns the format and an answer near gold, not arithmetic
PROBLEMS = [
    {"id": "p0", "problem": "Compute 1 + 2.", "answer": "3"},
    {"id": "p1", "problem": "Compute 2 + 2.", "answer": "4"},
    {"id": "p2", "problem": "Compute 6 - 1.", "answer": "5"},
    {"id": "p3", "problem": "Compute 3 + 3.", "answer": "6"},
]


def write_problems(path: Path, problems: list[dict] = PROBLEMS) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return path


def build_rl_policy(path: str, tiny_model: str) -> str:
    """A saved tiny model that answers ``\\boxed{gold}`` or ``\\boxed{gold + 1}`` (about half each) and stops."""
    import torch
    from transformers import AutoModelForCausalLM

    from w2sr.records.prompts import build_messages, render_prompt
    from w2sr.training.loading import load_tokenizer

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
    for _ in range(STEPS):
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


def fit_grpo(model_path: str, problems: Path, root: Path, *, steps: int, batch_size: int = 2, accumulate: int = 1,
             lr: float = 1e-3, finetune: str = "full", callbacks: list | None = None, ckpt_path: str | None = None,
             devices: int = 1, **rl):  # fmt: skip
    """``trainer.fit`` of a GRPOStudent on ``problems`` with a plain Lightning Trainer (CPU, float32, no logger);
    returns the module (its ``model`` holds the trained weights)."""
    from functools import partial

    import torch
    from lightning.pytorch import Trainer

    from w2sr.rl import GRPOStudent, ProblemDataModule, RLOptions

    options = {"num_generations": 2, "max_new_tokens": 6, **rl}
    if isinstance(options.get("vllm"), dict):
        from w2sr.generation.vllm_options import VLLMOptions

        options["vllm"] = VLLMOptions(**options["vllm"])
    module = GRPOStudent(
        model_name_or_path=model_path,
        finetune=finetune,
        dtype="float32",
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.0),
        scheduler={"name": "constant_with_warmup", "warmup_ratio": 0.0},
        export_dir=str(root / "export"),
        rl=RLOptions(**options),
    )
    data = ProblemDataModule(problems=str(problems), batch_size=batch_size, tokenizer=model_path)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=bool(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=callbacks or [],
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module
