"""Pilot a prior recipe before a seeded run of the toy study, on a seed that is not one of the study's.

``w2sr fit --config configs/fit_prior.yaml`` of one seed's prior, with ``PriorMonitor`` (a Lightning callback, added
from the command line like any other) scoring the prior every ``--every`` steps on the seed's *pool* problems, never
on the held-out ones: greedy accuracy and, from ``--samples`` samples per problem at T=1, the share solving step by
step (a ``carry`` line), how many of those are right (the latent skill) and how many direct answers are right (the
shortcut, or the direct skill it may grow). One JSON line per measurement in ``<output>/monitor.jsonl``. The pilots
quoted in ``configs/fit_prior.yaml``'s header are runs of this script (seeds 7, 8, 9).

Exercised by ``python examples/toy_w2s/pilot_prior.py --seed 7 --output runs/pilot/seed7`` (about 4-5 minutes on one
core; ``--steps``, ``--schedule`` and ``--prior-answers`` try other recipes) and ``pytest tests/cli/test_toy_study.py
-k monitor``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from w2sr.generation.base import SamplingOptions
from w2sr.generation.hf import generate_completions
from w2sr.records.jsonl import read_jsonl
from w2sr.records.prompts import build_messages, render_prompt
from w2sr.verification.grade import VerifyOptions, verify_completion

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import task  # noqa: E402


@dataclass
class PriorScore:
    """What one measurement of the prior found on the pool problems."""

    step: int
    greedy: float  # greedy accuracy
    greedy_step_share: float  # share of greedy answers that solve step by step
    sampled_step_share: float  # share of the T=1 samples that solve step by step
    step_right: float  # of those, the share right (the latent skill)
    direct_right: float  # of the other samples, the share right
    sampled_right: float  # all samples: the share right (GRPO's starting reward)
    seconds: float = 0.0


def is_step_by_step(completion: str) -> bool:
    """A completion that adds column by column (the gold solution's ``carry`` lines)."""
    return "carry" in completion


def score(step: int, greedy: Sequence[tuple[str, bool]], sampled: Sequence[tuple[str, bool]]) -> PriorScore:
    """Score (completion, correct) pairs: greedy ones (one per problem) and sampled ones (any number per problem)."""
    steps = [right for text, right in sampled if is_step_by_step(text)]
    direct = [right for text, right in sampled if not is_step_by_step(text)]

    def share(values: Sequence[bool]) -> float:
        return round(sum(values) / len(values), 4) if values else 0.0

    return PriorScore(
        step=step,
        greedy=share([right for _, right in greedy]),
        greedy_step_share=share([is_step_by_step(text) for text, _ in greedy]),
        sampled_step_share=round(len(steps) / len(sampled), 4) if sampled else 0.0,
        step_right=share(steps),
        direct_right=share(direct),
        sampled_right=share([right for _, right in sampled]),
    )


class PriorMonitor(Callback):
    """Every ``every`` optimizer steps from ``start`` on (and at the end), score the prior on ``problems`` pool
    problems of ``pool`` (a problems JSONL file): greedy, and ``samples`` samples each at T=1; append a
    ``PriorScore`` to ``out``."""

    def __init__(
        self,
        pool: str,
        out: str,
        every: int = 100,
        start: int = 400,
        problems: int = 200,
        samples: int = 4,
        max_new_tokens: int = 96,
        seed: int = 0,
    ) -> None:
        self.problems = list(read_jsonl(pool))[:problems]
        self.out, self.every, self.start, self.samples = Path(out), every, start, samples
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self._last = -1

    def measure(self, model: Any, tokenizer: Any, step: int) -> PriorScore:
        """Score ``model`` now (in eval mode; its training mode is restored)."""
        started, training = time.time(), model.training
        model.eval()
        prompts = [render_prompt(tokenizer, build_messages(p["problem"], task.PROMPT)) for p in self.problems]
        options = VerifyOptions(grader="paper")

        def graded(n: int, temperature: float) -> list[tuple[str, bool]]:
            sampling = SamplingOptions(
                n=n, temperature=temperature, max_new_tokens=self.max_new_tokens, seed=self.seed + step, batch_size=50
            )
            out = []
            for problem, completions in zip(self.problems, generate_completions(model, tokenizer, prompts, sampling)):
                for c in completions:
                    verdict = verify_completion(problem["answer"], c.text, source=task.SOURCE, options=options)
                    out.append((c.text, bool(verdict.correct)))
            return out

        with torch.no_grad():
            result = score(step, graded(1, 0.0), graded(self.samples, 1.0))
        result.seconds = round(time.time() - started, 1)
        model.train(training)
        return result

    def _maybe_measure(self, trainer: Trainer, pl_module: LightningModule, force: bool = False) -> None:
        step = trainer.global_step
        if step == self._last or not trainer.is_global_zero:
            return
        if not force and (step < self.start or step % self.every):
            return
        self._last = step
        result = self.measure(pl_module.model, pl_module.tokenizer, step)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(result)) + "\n")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._maybe_measure(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._maybe_measure(trainer, pl_module, force=True)


def fit_command(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    """The ``w2sr fit`` of the prior with the monitor (the study's config; steps and schedule overridden)."""
    return [
        *(sys.executable, "-m", "w2sr.cli", "fit", "--config", str(HERE / "configs" / "fit_prior.yaml")),
        *(
            "--model.model_name_or_path",
            str(data / "student-init"),
            "--data.train_file",
            str(data / "gold_prior.jsonl"),
        ),
        *("--model.export_dir", str(out / "prior"), "--trainer.default_root_dir", str(out / "fit")),
        *("--trainer.logger.init_args.save_dir", str(out / "fit"), "--seed_everything", str(args.seed)),
        *("--trainer.max_steps", str(args.steps), "--model.scheduler.name", args.schedule),
        *("--trainer.callbacks+=pilot_prior.PriorMonitor", f"--trainer.callbacks.pool={data / 'pool.jsonl'}"),
        *(f"--trainer.callbacks.out={out / 'monitor.jsonl'}", f"--trainer.callbacks.every={args.every}"),
        *(f"--trainer.callbacks.start={args.start}", f"--trainer.callbacks.seed={args.seed}"),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, required=True, help="a seed that is not one of the study's")
    parser.add_argument("--output", required=True, help="folder for the data, the fit and monitor.jsonl (must be new)")
    parser.add_argument("--steps", type=int, default=1200, help="the prior's optimizer steps")
    parser.add_argument("--schedule", default="cosine", help="the learning-rate schedule (configs/fit_prior.yaml's)")
    parser.add_argument("--prior-answers", choices=task.PRIOR_ANSWERS, default=task.TaskSizes.prior_answers)
    parser.add_argument("--every", type=int, default=100, help="measure every this many steps")
    parser.add_argument("--start", type=int, default=400, help="first step measured (and always the last)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS), as run.py's steps")
    args = parser.parse_args(argv)
    out = Path(args.output)
    if out.exists():
        parser.exit(2, f"error: {out} exists; pilots never overwrite one another\n")
    data = out / "data"
    task.write_data(data, args.seed, task.TaskSizes(prior_answers=args.prior_answers))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    with open(out / "fit.log", "w", encoding="utf-8") as log:
        code = subprocess.run(fit_command(args, data, out), stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        parser.exit(code, f"error: the fit failed (exit {code}); see {out / 'fit.log'}\n")
    for line in (out / "monitor.jsonl").read_text(encoding="utf-8").splitlines():
        print(line)


if __name__ == "__main__":
    main()
