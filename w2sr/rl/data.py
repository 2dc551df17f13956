"""ProblemDataModule: problems with gold answers for GRPO, dealt out per optimizer step (``data:`` of an RL config).

Problems are read by the generation stage's readers (``w2sr.records.problems.load_problems``: a local
.jsonl/.json/.parquet/.csv file or a ``datasets`` hub id, with the same ``fields`` map as ``w2sr generate``) and their
prompts rendered with the same templates (``data.prompt``) and the model's tokenizer (linked from the model by the
CLI). ``data.batch_size`` problems per optimizer step and device: each step's problems are a contiguous block of a
seeded permutation of the problems (the same on every rank), rank ``r`` taking the ``r``-th share, so a step's
problems do not depend on how they are split over ranks and micro-batches.

``ProblemStepSampler`` yields, for every optimizer step, ``accumulate_grad_batches`` micro-batch items (the policy
generates the rollouts of the whole step at the first, then trains one slice of them per item), ``num_iterations``
times over (``model.rl.num_iterations``: rollouts reused). It plugs into ``w2sr.training.batching.StepDataLoader``,
whose position is saved in checkpoints, so a resumed run continues with exactly the next micro-batch. An epoch drops
the problems that do not fill a last whole step. Held-out problems (``val_problems`` or ``val_fraction``) serve
``w2sr.callbacks.ReasoningAccuracy``. Exercised by ``pytest tests/rl/test_problem_data.py``.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset, DistributedSampler

from w2sr.records.jsonl import InputError
from w2sr.records.problems import FieldMap, Problem, load_problems
from w2sr.records.prompts import PromptOptions, build_messages, render_prompt
from w2sr.records.traces import Trace
from w2sr.training.batching import StepDataLoader
from w2sr.training.datamodule import in_validation


@dataclass
class PromptedProblem:
    """A problem with its chat messages and rendered prompt tokens."""

    problem: Problem
    messages: list[dict[str, str]]
    prompt_ids: list[int]


@dataclass(frozen=True)
class StepItem:
    """One micro-batch item: this rank's problems of the step (indices), which slice and which reuse it is."""

    problems: tuple[int, ...]
    epoch: int
    step: int  # generation index within the epoch
    iteration: int  # 0 .. num_iterations - 1
    micro: int  # 0 .. accumulate - 1
    accumulate: int
    step_end: bool


class ProblemStepSampler(DistributedSampler):
    """This rank's ``StepItem`` s for the epoch (see the module docstring); the same plan on every rank."""

    def __init__(
        self,
        num_problems: int,
        batch_size: int,
        accumulate: int = 1,
        num_iterations: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        # no super().__init__ (it needs a process group); Lightning leaves a DistributedSampler it finds in place
        self.n, self.batch_size, self.accumulate, self.iterations = num_problems, batch_size, accumulate, num_iterations
        self.num_replicas, self.rank, self.shuffle, self.seed = num_replicas, rank, shuffle, seed
        self.epoch, self.start_at, self.drop_last = 0, 0, True
        self.steps = num_problems // (batch_size * num_replicas)  # generations per epoch
        self.num_samples = self.steps * num_iterations * accumulate  # micro-batch items per rank and epoch
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def order(self, epoch: int) -> list[int]:
        """The epoch's problem order (a seeded permutation, or file order without shuffling)."""
        order = list(range(self.n))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def items(self) -> list[StepItem]:
        order, per_step = self.order(self.epoch), self.batch_size * self.num_replicas
        out = []
        for step in range(self.steps):
            start = step * per_step + self.rank * self.batch_size
            mine = tuple(order[start : start + self.batch_size])
            for iteration in range(self.iterations):
                for micro in range(self.accumulate):
                    end = micro == self.accumulate - 1
                    out.append(StepItem(mine, self.epoch, step, iteration, micro, self.accumulate, end))
        return out

    def __iter__(self) -> Iterator[StepItem]:
        start, self.start_at = self.start_at, 0
        yield from self.items()[start:]


class ProblemDataset(Dataset):
    """Maps a ``StepItem`` to its batch: the prompted problems and the item's place in the step."""

    def __init__(self, problems: list[PromptedProblem]) -> None:
        self.problems = problems

    def __len__(self) -> int:
        return len(self.problems)

    def __getitem__(self, item: StepItem) -> dict[str, Any]:
        return {"problems": [self.problems[i] for i in item.problems], "item": item}


def keep_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The loader's collate function: a batch is already built by ``ProblemDataset``."""
    return batch


class ProblemDataModule(LightningDataModule):
    """Problems with gold answers for GRPO (``data: class_path: w2sr.rl.ProblemDataModule``)."""

    def __init__(
        self,
        problems: str | None = None,
        fields: FieldMap = FieldMap(),
        split: str = "train",
        subset: str | None = None,
        source_name: str | None = None,
        limit: int | None = None,
        val_problems: str | None = None,
        val_fraction: float = 0.05,
        batch_size: int = 8,
        prompt: PromptOptions = PromptOptions(),
        max_prompt_length: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        """
        Args:
            problems: a local .jsonl/.json/.parquet/.csv file or a ``datasets`` hub id with problems and gold answers.
            fields: which input fields hold the problem, gold answer and id (as in ``w2sr generate``).
            split: dataset split for hub ids.
            subset: dataset configuration name for hub ids.
            source_name: the ``source`` of each problem (default: from the file or hub id; it picks the gold
                normalisation of the verifier).
            limit: only the first N problems.
            val_problems: held-out problems for ``w2sr.callbacks.ReasoningAccuracy`` (same readers and fields).
            val_fraction: otherwise hold out this share of ``problems`` (by a hash of the id; the default of
                ``TraceDataModule``, whose options a config switching class_path keeps).
            batch_size: problems per optimizer step on each device (each gives ``model.rl.num_generations``
                completions); the step's completions are split over ``trainer.accumulate_grad_batches`` micro-batches.
            prompt: prompt template and overrides (the generation stage's ``prompt`` options).
            max_prompt_length: drop problems whose rendered prompt has more tokens (null: keep all).
            shuffle: a new seeded order of the problems every epoch (false: file order).
            seed: the order's seed (with ``seed_everything``).
            tokenizer: linked from the model by the CLI: renders and tokenizes the prompts.
            trust_remote_code: linked from the model.
        """
        super().__init__()
        self.save_hyperparameters()
        self.fields = fields if isinstance(fields, FieldMap) else FieldMap(**dict(fields))
        self.prompt = prompt if isinstance(prompt, PromptOptions) else PromptOptions(**dict(prompt))
        self.hparams.update(fields=asdict(self.fields), prompt=asdict(self.prompt))  # plain data in checkpoints
        if batch_size < 1:
            raise InputError(f"must be at least 1, got {batch_size}", field="data.batch_size")
        if not 0 <= val_fraction < 1:
            raise InputError(f"must be in [0, 1), got {val_fraction}", field="data.val_fraction")
        self.tokenizer: Any = None
        self.train_problems: list[PromptedProblem] = []
        self.val_problems: list[PromptedProblem] = []
        self.stats: dict[str, int] = {}

    def load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            from w2sr.training.loading import data_tokenizer

            self.tokenizer = data_tokenizer(self.hparams.tokenizer, self.hparams.trust_remote_code)
        return self.tokenizer

    def _load(self, source: str) -> list[Problem]:
        hp = self.hparams
        return load_problems(
            source, split=hp.split, fields=self.fields, name=hp.source_name, limit=hp.limit, subset=hp.subset
        )

    def _prompted(self, problems: list[Problem]) -> list[PromptedProblem]:
        hp, options = self.hparams, self.prompt
        tokenizer = self.load_tokenizer()
        out, dropped = [], 0
        for problem in problems:
            messages = build_messages(problem.problem, options)
            try:
                text = render_prompt(tokenizer, messages, options.use_chat_template)
            except InputError as err:
                raise InputError(str(err), field="data.prompt.use_chat_template") from None
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if hp.max_prompt_length is not None and len(ids) > hp.max_prompt_length:
                dropped += 1
                continue
            out.append(PromptedProblem(problem, messages, ids))
        if dropped:
            rank_zero_warn(f"w2sr: dropped {dropped} problems with prompts over {hp.max_prompt_length} tokens")
        self.stats["dropped_long_prompts"] = self.stats.get("dropped_long_prompts", 0) + dropped
        return out

    def setup(self, stage: str) -> None:
        hp = self.hparams
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        if module is not None and not hasattr(module, "rl"):
            raise InputError(
                "data w2sr.rl.ProblemDataModule holds problems for GRPO: set model.class_path w2sr.rl.GRPOStudent "
                "(or use the SFT traces' data module)",
                field="model",
            )
        if stage not in ("fit", "validate") or self.train_problems:
            return
        if not hp.problems:
            raise InputError("no problems: set data.problems (a file or a datasets hub id)", field="data.problems")
        problems = self._load(hp.problems)
        if hp.val_problems:
            val = self._load(hp.val_problems)
        else:
            val = [p for p in problems if in_validation(p.id, hp.val_fraction, hp.seed)]
            problems = [p for p in problems if not in_validation(p.id, hp.val_fraction, hp.seed)]
        self.train_problems, self.val_problems = self._prompted(problems), self._prompted(val)
        self.stats.update(train_problems=len(self.train_problems), val_problems=len(self.val_problems))
        rank_zero_info(f"w2sr: RL problems: {self.stats}")

    def validation_problems(self) -> list[Trace]:
        """One prompt-only trace per held-out problem (its messages and gold), for ``ReasoningAccuracy``."""
        return [Trace(p.problem, 0, "", p.messages, "", "stop", 0) for p in self.val_problems]

    def train_sampler(self) -> ProblemStepSampler:
        """This rank's plan: steps of ``batch_size`` problems, ``accumulate`` micro-batch items each, repeated
        ``model.rl.num_iterations`` times (read from the attached module)."""
        hp, trainer = self.hparams, self.trainer
        accumulate, world, rank = (
            (trainer.accumulate_grad_batches, trainer.world_size, trainer.global_rank) if trainer else (1, 1, 0)
        )
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        rl = getattr(module, "rl", None)
        iterations = int(getattr(rl, "num_iterations", 1))
        sampler = ProblemStepSampler(
            len(self.train_problems),
            hp.batch_size,
            accumulate=accumulate,
            num_iterations=iterations,
            num_replicas=world,
            rank=rank,
            shuffle=hp.shuffle,
            seed=hp.seed * 2**32 + int(os.environ.get("PL_GLOBAL_SEED", 0)),
        )
        if sampler.steps == 0:
            raise InputError(
                f"{len(self.train_problems)} training problems do not fill one step of data.batch_size "
                f"{hp.batch_size} x {world} devices",
                path=hp.problems,
                field="data.batch_size",
            )
        return sampler

    def train_dataloader(self) -> StepDataLoader:
        return StepDataLoader(ProblemDataset(self.train_problems), self.train_sampler(), keep_batch)

    def val_dataloader(self) -> list:
        return []  # held-out accuracy comes from ReasoningAccuracy (generation), not a loss
