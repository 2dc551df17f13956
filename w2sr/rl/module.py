"""GRPOStudent: the student trained by GRPO, as a LightningModule run by the same ``w2sr fit`` as SFT.

A subclass of ``w2sr.training.module.StudentModule``: loading (hub id or folder, dtype, LoRA, QLoRA, full
fine-tuning), the optimizer and schedule, checkpoints of the trainable weights, FSDP / DeepSpeed preparation and the
export at the end of ``fit`` (``model.export_dir``, loadable by ``w2sr evaluate`` and vLLM) are the SFT student's.
What it adds, per optimizer step (``data: w2sr.rl.ProblemDataModule`` hands the step's problems):

1. at the step's first micro-batch (``on_train_batch_start``, outside DDP's forward): ``model.rl.num_generations``
   rollouts per problem from the current policy (``w2sr.rl.rollouts``, or the in-process vLLM engine of
   ``w2sr.rl.vllm_engine``), rewards from the verifier (``w2sr.rl.rewards``), group advantages
   (``w2sr.rl.advantages``), the log-probabilities of the generating policy when rollouts are reused
   (``num_iterations`` > 1) and of the reference when ``beta`` > 0, and the step's completion-token count summed over
   ranks (one all-reduce): the ``dapo`` normaliser;
2. per micro-batch (``training_step``): one slice of the step's completions, the policy's token log-probabilities
   and the clipped loss of ``w2sr.rl.loss`` (returned times ``accumulate_grad_batches``: Lightning divides by it);
3. at the step's end: the metrics of ``w2sr.rl.metrics``, reduced over ranks once.

With ``num_iterations`` > 1 the step's rollouts (with their old log-probabilities) are reused by the next steps;
checkpoints carry them (gathered from every rank), so ``--ckpt_path`` resumes inside a reuse cycle exactly.
Exercised by ``w2sr fit --config lightning_configs/quickstart/rl.yaml`` and ``pytest tests/rl``.
"""

from __future__ import annotations

import copy
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

import torch

from w2sr.generation.base import sample_seed
from w2sr.generation.hf import stop_token_ids
from w2sr.records.jsonl import InputError
from w2sr.rl.advantages import equal_reward_groups, group_advantages
from w2sr.rl.data import PromptedProblem, StepItem
from w2sr.rl.loss import grpo_loss
from w2sr.rl.metrics import StepMeter, step_metrics
from w2sr.rl.options import RLOptions, as_rl_options
from w2sr.rl.rewards import score_completions
from w2sr.rl.rollouts import Rollout, RolloutBatch, hf_rollouts, rollout_batch, token_logps
from w2sr.training.module import StudentModule

CACHE_KEY = "w2sr_rl_rollouts"


@dataclass
class StepRollouts:
    """One generation's rollouts on this rank, ready for the loss (rows grouped by problem)."""

    key: tuple[int, int]  # (epoch, step)
    batch: RolloutBatch
    mask: torch.Tensor  # [rows, completion width]: the loss tokens
    advantages: torch.Tensor  # [rows]
    step_tokens: torch.Tensor  # loss tokens of the whole step over all ranks
    old_logps: torch.Tensor | None
    ref_logps: torch.Tensor | None
    stats: dict[str, float]  # the rollouts' figures for the metrics of every step that trains on them

    def rows(self, micro: int, accumulate: int) -> slice:
        per = self.advantages.numel() // accumulate
        return slice(micro * per, (micro + 1) * per)

    def state(self) -> dict[str, Any]:
        return {
            k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items() if k != "batch"
        } | {"batch": [t.cpu() for t in asdict_batch(self.batch)]}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> StepRollouts:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in state.items() if k != "batch"}
        return cls(batch=RolloutBatch(*state["batch"]).to(device), **{**moved, "key": tuple(state["key"])})


def asdict_batch(batch: RolloutBatch) -> list[torch.Tensor]:
    return [batch.input_ids, batch.attention_mask, batch.completion_mask, batch.completion_ids]


class GRPOStudent(StudentModule):
    """A causal LM trained by GRPO on problems with gold answers (``model: class_path: w2sr.rl.GRPOStudent``)."""

    def __init__(self, *args: Any, rl: RLOptions = RLOptions(), **kwargs: Any) -> None:
        """
        Args:
            rl: rollouts, rewards, advantages and loss (``model.rl.*``: ``num_generations``, ``temperature``,
                ``max_new_tokens``, ``backend``, ``loss_type``, ``scale_rewards``, ``epsilon``, ``epsilon_high``,
                ``beta``, ``num_iterations``, ``mask_truncated``, ``grader``, ...). Every other option is
                ``StudentModule``'s (``w2sr fit --model.help w2sr.training.module.StudentModule``).
        """
        super().__init__(*args, **kwargs)
        self.rl = as_rl_options(rl)
        self.hparams["rl"] = self.rl
        for name, value in self.hparams.items():  # plain data in checkpoints: Lightning loads them weights_only
            if is_dataclass(value):
                self.hparams[name] = asdict(value)
        self._rollouts: StepRollouts | None = None
        self._reference: list[Any] = []  # a frozen copy for full fine-tuning with beta > 0 (not a submodule)
        self._engine: Any = None
        self._meter = StepMeter()
        self._clock = 0.0
        self.reward_history: list[float] = []  # rl/reward of every optimizer step of this process
        self.token_counts: list[int] = []  # this rank's loss tokens of every generation

    # ------------------------------------------------------------------------------------------------ setup
    def configure_model(self) -> None:
        built = self.model is None
        super().configure_model()
        if built and self.rl.beta > 0 and self.hparams.finetune == "full":
            reference = copy.deepcopy(self.model).eval()
            reference.requires_grad_(False)
            precision = str(self._trainer.precision) if self._trainer is not None else ""
            if precision.startswith(("bf16", "16")):  # the compute dtype: half the memory of float32 master weights
                reference.to(torch.bfloat16 if precision.startswith("bf16") else torch.float16)
            self._reference = [reference]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        from w2sr.rl.data import ProblemDataModule

        trainer = self.trainer
        if not isinstance(trainer.datamodule, ProblemDataModule):
            raise InputError(
                "model w2sr.rl.GRPOStudent trains on problems: set data.class_path w2sr.rl.ProblemDataModule",
                field="data",
            )
        if trainer.strategy.handles_gradient_accumulation and trainer.accumulate_grad_batches > 1:
            raise InputError(
                f"trainer.strategy {type(trainer.strategy).__name__} accumulates gradients by itself; use "
                "w2sr.strategies.W2SRDeepSpeedStrategy or trainer.accumulate_grad_batches 1",
                field="trainer.strategy",
            )
        rows = trainer.datamodule.hparams.batch_size * self.rl.num_generations
        if rows % trainer.accumulate_grad_batches:
            raise InputError(
                f"a step's {rows} completions (data.batch_size x model.rl.num_generations) do not split into "
                f"{trainer.accumulate_grad_batches} equal micro-batches",
                field="trainer.accumulate_grad_batches",
            )

    def on_train_start(self) -> None:
        super().on_train_start()
        if self._reference:
            self._reference[0].to(self.device)
        if self.rl.backend == "vllm" and self._engine is None:
            from w2sr.rl.vllm_engine import PolicyEngine

            self._engine = PolicyEngine.start(self)

    # ------------------------------------------------------------------------------------------- rollouts
    def generate_rollouts(self, problems: list[PromptedProblem], epoch: int) -> list[Rollout]:
        """``num_generations`` completions per problem, each from its own seed, grouped by problem."""
        rl, tokenizer = self.rl, self.tokenizer
        prompts = [p.prompt_ids for p in problems for _ in range(rl.num_generations)]
        seeds = [
            sample_seed(rl.seed, f"{epoch}:{p.problem.id}", g) for p in problems for g in range(rl.num_generations)
        ]
        if self._engine is not None:
            return self._engine.rollouts(self, prompts, seeds)
        return hf_rollouts(
            self.model,
            tokenizer,
            prompts,
            seeds,
            stops=stop_token_ids(tokenizer, self.model),
            temperature=rl.temperature,
            top_p=rl.top_p,
            max_new_tokens=rl.max_new_tokens,
            batch_size=rl.generation_batch_size,
        )

    def whole_weights(self) -> AbstractContextManager:
        """Outside the training step's forward, FSDP's root unit (embeddings, head, final norm) stays sharded: gather
        it (not the decoder layers, which gather themselves in their forward) for generation and log-probs."""
        strategy = self.trainer.strategy
        if "FSDP" not in type(strategy).__name__:
            return nullcontext()
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(strategy.model, recurse=False, writeback=False)

    @torch.no_grad()
    def _logps_by_micro(self, model: Any, batch: RolloutBatch, accumulate: int) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            per = batch.input_ids.size(0) // accumulate
            parts = [
                token_logps(model, slice_batch(batch, slice(s, s + per)), self.rl.temperature)[0]
                for s in range(0, batch.input_ids.size(0), per)
            ]
        finally:
            model.train(was_training)
        return torch.cat(parts)

    def _reference_logps(self, batch: RolloutBatch, accumulate: int) -> torch.Tensor:
        if self._reference:
            return self._logps_by_micro(self._reference[0], batch, accumulate)
        if self.hparams.finetune == "lora":
            with self.model.disable_adapter():
                return self._logps_by_micro(self.model, batch, accumulate)
        raise RuntimeError("no reference model")

    def prepare_step(self, problems: list[PromptedProblem], item: StepItem) -> StepRollouts:
        """Rollouts, rewards, advantages and the step's normaliser (see the module docstring, step 1)."""
        rl, trainer = self.rl, self.trainer
        start = time.perf_counter()
        with trainer.precision_plugin.forward_context(), self.whole_weights():  # the training step's precision
            rollouts = self.generate_rollouts(problems, item.epoch)
        scored = time.perf_counter()
        stops = set(stop_token_ids(self.tokenizer, self.model))
        texts = [
            self.tokenizer.decode([t for t in r.completion_ids if t not in stops], skip_special_tokens=True)
            for r in rollouts
        ]
        owners = [p.problem for p in problems for _ in range(rl.num_generations)]
        truncated = [r.truncated for r in rollouts]
        scores = score_completions(
            owners,
            texts,
            truncated,
            grader=rl.grader,
            timeout=rl.grader_timeout,
            truncated_as_wrong=not rl.mask_truncated,
        )
        done = time.perf_counter()
        rewards = torch.tensor(scores.rewards, dtype=torch.float32, device=self.device)
        if rl.scale_rewards == "batch" and trainer.world_size > 1:  # the std of the whole step, all ranks
            everyone = trainer.strategy.all_gather(rewards).reshape(-1)
            advantages = group_advantages(everyone, rl.num_generations, "batch").view(trainer.world_size, -1)
            advantages = advantages[trainer.global_rank]
        else:
            advantages = group_advantages(rewards, rl.num_generations, rl.scale_rewards)
        batch = rollout_batch(rollouts, self.tokenizer.pad_token_id).to(self.device)
        mask = batch.completion_mask.clone()
        cut = torch.tensor(truncated, device=self.device)
        if rl.mask_truncated:
            mask[cut] = 0
        self.token_counts.append(int(mask.sum()))
        step_tokens = trainer.strategy.reduce(mask.sum().to(torch.float64), reduce_op="sum")
        with trainer.precision_plugin.forward_context(), self.whole_weights():  # as the training step computes them
            old = self._logps_by_micro(self.model, batch, item.accumulate) if rl.num_iterations > 1 else None
            ref = self._reference_logps(batch, item.accumulate) if rl.beta > 0 else None
        generated = float(batch.completion_mask.sum())
        stats = dict(
            reward_sum=float(torch.nansum(rewards)),
            gradable=float((~torch.isnan(rewards)).sum()),
            correct=float(scores.statuses["correct"]),
            completions=float(len(rollouts)),
            groups=float(len(problems)),
            equal_groups=float(equal_reward_groups(rewards, rl.num_generations).sum()),
            ungradable=float(scores.ungradable),
            truncated=float(sum(truncated)),
            generated_tokens=generated,
        )
        self._meter.add(time_rollout=scored - start, time_scoring=done - scored)
        self._cost(rollout=scored - start, scoring=done - scored, generated=generated)
        return StepRollouts((item.epoch, item.step), batch, mask, advantages, step_tokens, old, ref, stats)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """A step's batch holds problems and prompt ids, no tensors: the rollouts are made on the device."""
        return batch

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        item: StepItem = batch["item"]
        if item.micro == 0 and item.iteration == 0:
            self._rollouts = self.prepare_step(batch["problems"], item)
        elif self._rollouts is None or self._rollouts.key != (item.epoch, item.step):
            raise RuntimeError(
                f"the rollouts of epoch {item.epoch} step {item.step} are missing (a checkpoint without them?)"
            )
        if item.micro == 0:
            self._meter.add(**self._rollouts.stats)
        self._clock = time.perf_counter()

    # ------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The loss of one slice of the step's completions, ``accumulate x l_mb`` (``w2sr.rl.loss``)."""
        item: StepItem = batch["item"]
        rl, step, trainer = self.rl, self._rollouts, self.trainer
        rows = step.rows(item.micro, item.accumulate)
        micro = slice_batch(step.batch, rows)
        logps, entropy = token_logps(self.model, micro, rl.temperature, entropy=True)
        mask = step.mask[rows]
        loss, stats = grpo_loss(
            logps,
            mask,
            step.advantages[rows],
            loss_type=rl.loss_type,
            epsilon=rl.epsilon,
            epsilon_high=rl.clip_high,
            beta=rl.beta,
            old_logps=step.old_logps[rows] if step.old_logps is not None else None,
            ref_logps=step.ref_logps[rows] if step.ref_logps is not None else None,
            kl_bias_correction=rl.kl_bias_correction,
            accumulate=item.accumulate,
            world_size=trainer.world_size,
            step_tokens=step.step_tokens,
            max_new_tokens=rl.max_new_tokens,
        )
        self._meter.add(
            loss=loss.detach(),
            loss_tokens=stats.tokens,
            clipped=stats.clipped,
            kl=stats.kl,
            entropy=(entropy * mask).sum(),
        )
        self._cost(trained=float(stats.tokens))
        return loss * item.accumulate

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._clock  # the micro-batch's forward, backward and optimizer step
        self._meter.add(time_training=elapsed)
        self._cost(training=elapsed)
        if batch["item"].step_end:
            totals = self.trainer.strategy.reduce(self._meter.vector(self.device), reduce_op="sum")
            self._meter.reset()
            metrics = step_metrics(totals.cpu(), self.trainer.world_size)
            self.log("train/loss", metrics.pop("train/loss"), prog_bar=True, on_step=True, on_epoch=False, batch_size=1)
            self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
            self.reward_history.append(metrics["rl/reward"])

    # ---------------------------------------------------------------------------------- checkpoint / export
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The trainable weights (StudentModule), plus every rank's reusable rollouts when ``num_iterations`` > 1."""
        super().on_save_checkpoint(checkpoint)
        if self.rl.num_iterations > 1 and self._rollouts is not None:
            mine = self._rollouts.state()
            trainer = self.trainer
            if trainer.world_size > 1:
                import torch.distributed as dist

                everyone: list[Any] = [None] * trainer.world_size
                dist.all_gather_object(everyone, mine)
            else:
                everyone = [mine]
            checkpoint[CACHE_KEY] = everyone

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        states = checkpoint.get(CACHE_KEY)
        if states and self._trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
            if len(states) != world:
                raise InputError(
                    f"the checkpoint's reusable rollouts are from {len(states)} ranks, this run has {world}",
                    field="ckpt_path",
                )
            self._rollouts = StepRollouts.from_state(states[rank], self.device)

    def _student_card(self) -> dict[str, Any]:
        return {**super()._student_card(), "method": "grpo", "rl": asdict(self.rl)}

    def on_train_end(self) -> None:
        super().on_train_end()
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # ------------------------------------------------------------------------------------------------- cost
    def configure_callbacks(self) -> list[Any]:
        """A ``w2sr.runtime.cost.CostMeter`` with stage ``rl`` (``<default_root_dir>/cost.json``: phases rollout /
        scoring / training, tokens generated and trained) unless the trainer has one."""
        from w2sr.runtime.cost import default_meters

        return default_meters(self.trainer, stage="rl", count_batches=False)

    def _cost(self, generated: float = 0, trained: float = 0, **phases: float) -> None:
        """Add this rank's tokens and phase seconds to the run's cost meter (summed / max over ranks at the end)."""
        from w2sr.runtime.cost import cost_meter

        meter = cost_meter(self.trainer)
        if meter is None:
            return
        meter.add_tokens(generated=int(generated), trained=int(trained))
        if meter.clock is not None:
            for name, seconds in phases.items():
                meter.clock.phases[name] = meter.clock.phases.get(name, 0.0) + seconds


def slice_batch(batch: RolloutBatch, rows: slice) -> RolloutBatch:
    """Rows ``rows`` of a rollout batch."""
    return RolloutBatch(*(t[rows] for t in asdict_batch(batch)))
