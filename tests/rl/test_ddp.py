"""Exact token weighting over ranks (issue 25, item 2): GRPO on 2 gloo ranks (2 problems per rank and step) ends
with the weights of 1 rank accumulating 2 micro-batches of the same 4 problems per step: the same rollouts (per-sample
seeds), the same micro-batches, the ``dapo`` normaliser summed over ranks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from rl_helpers import write_problems

pytestmark = pytest.mark.slow  # two DDP processes plus one single-process run, each loading torch and Lightning

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[1]]
    import torch
    from rl_helpers import fit_grpo

    model, problems, root, devices, accumulate, batch = sys.argv[2:8]
    module = fit_grpo(model, Path(problems), Path(root), steps=2, batch_size=int(batch), accumulate=int(accumulate),
                      devices=int(devices), lr=0.01, num_generations=2, loss_type=sys.argv[8],
                      temperature=1.5, max_new_tokens=8)  # hot sampling: completion lengths differ per rank
    if module.trainer.is_global_zero:
        torch.save({k: v.detach() for k, v in module.model.named_parameters()}, Path(root) / "weights.pt")
    torch.save(module.token_counts, Path(root) / f"lengths{module.trainer.global_rank}.pt")
""")


def run(script: Path, policy: str, problems: Path, root: Path, devices: int, accumulate: int, batch: int, loss: str):
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tests.parent)}
    args = [str(tests), policy, str(problems), str(root), str(devices), str(accumulate), str(batch), loss]
    result = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600, cwd=root.parent
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return torch.load(root / "weights.pt")


@pytest.mark.parametrize("loss_type", ["dapo"])
def test_two_gloo_ranks_equal_one_rank_with_accumulation(rl_policy, tmp_path, loss_type):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    problems = write_problems(tmp_path / "p.jsonl")
    one = run(script, rl_policy, problems, tmp_path / "one", devices=1, accumulate=2, batch=4, loss=loss_type)
    two = run(script, rl_policy, problems, tmp_path / "two", devices=2, accumulate=1, batch=2, loss=loss_type)
    from transformers import AutoModelForCausalLM

    start = dict(AutoModelForCausalLM.from_pretrained(rl_policy, dtype=torch.float32).named_parameters())
    assert max(float((one[k] - start[k].detach()).abs().max()) for k in one) > 1e-3  # the runs did train
    ranks = [torch.load(tmp_path / "two" / f"lengths{r}.pt") for r in (0, 1)]
    assert ranks[0] != ranks[1], ranks  # the ranks' steps had different token counts: the normaliser is tested
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
