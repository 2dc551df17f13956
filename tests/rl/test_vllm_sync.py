"""The vLLM rollout engine stays in step with the policy (issue 25, item 1), on the REAL engine (vLLM's CPU build,
``make test-vllm``): during ``fit`` with ``model.rl.backend: vllm``, the engine's greedy completions equal the policy's
own (HF) greedy completions before the first optimizer step and after the last, and differ between the two, for full
fine-tuning and for a LoRA policy (pushed merged). vLLM's CPU build repacks linear weights at load, so a raw
``model.load_weights`` fails there ("'Parameter' object has no attribute 'weight_loader'"); the engine reloads in place
(``reload_weights``) and rebuilds the tied head's kernel (``w2sr.rl.vllm_engine``)."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import skip_without_vllm
from lightning.pytorch import Callback
from rl_helpers import PROBLEMS, fit_grpo, write_problems

pytestmark = pytest.mark.vllm
skip_without_vllm()
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")  # vLLM's own CPU CI setting: no inductor, no warm-up


def greedy(module, engine) -> tuple[list[list[int]], list[list[int]]]:
    """``(engine's, policy's)`` greedy completions of the problems, as token ids up to the first stop."""
    from w2sr.generation.base import SamplingOptions
    from w2sr.records.prompts import build_messages, render_prompt
    from w2sr.rl.rollouts import split_completion

    tokenizer = module.tokenizer
    prompts = [
        tokenizer(render_prompt(tokenizer, build_messages(p["problem"])), add_special_tokens=False)["input_ids"]
        for p in PROBLEMS
    ]
    engine.sync(module)
    served = [r.completion_ids for r in engine.generate(prompts, [0] * len(prompts), SamplingOptions(max_new_tokens=8))]
    own = []
    model = module.model
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                 eos_token_id=engine.stops, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            own.append(split_completion(out[0, len(ids) :].tolist(), set(engine.stops), 8)[0])
    model.train(was_training)
    return served, own


class Probe(Callback):
    """Greedy completions of the engine and the policy before the first step and at the end of fit."""

    def __init__(self) -> None:
        self.before = self.after = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 0 and self.before is None:
            self.before = greedy(module, module._engine)

    def on_train_end(self, trainer, module):  # runs before the module's own on_train_end closes the engine
        self.after = greedy(module, module._engine)
        self.pushes = module._engine.pushes


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_the_engine_serves_the_policy_after_each_step(rl_policy, tmp_path, finetune):
    probe = Probe()
    fit_grpo(rl_policy, write_problems(tmp_path / "p.jsonl"), tmp_path / "run", steps=2, batch_size=4,
             num_generations=4, lr=0.05, finetune=finetune, backend="vllm", callbacks=[probe],
             vllm={"enforce_eager": True, "max_model_len": 128})  # fmt: skip
    (served0, own0), (served1, own1) = probe.before, probe.after
    assert served0 == own0  # the engine starts from the policy's weights
    assert served1 == own1  # and follows them: pushed after the optimizer steps
    assert served1 != served0  # the steps did change the greedy completions
    assert probe.pushes >= 3  # before the first generation, after step 1, and at the end
