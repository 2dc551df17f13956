"""Callbacks for ``w2sr fit``: reasoning accuracy on held-out problems while the student trains.

``ReasoningAccuracy`` generates answers for a few validation problems every N optimizer steps (and at the start and
end of training), verifies them against gold and logs ``val/reasoning_acc`` through a torchmetrics metric, which
sums correct/total over all ranks (each rank answers its share of the problems). Add it from YAML::

    trainer:
      callbacks:
        - class_path: w2sr.callbacks.ReasoningAccuracy
          init_args: {every_n_steps: 50, num_problems: 32}

Exercised by ``w2sr fit --config lightning_configs/quickstart.yaml`` and ``pytest tests/test_callbacks.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric, Metric

from w2sr.generation.base import SamplingOptions
from w2sr.generation.hf import generate_completions
from w2sr.prompts import render_prompt


class ReasoningAccuracyMetric(Metric):
    """Share of answers verified correct; answers whose gold cannot be parsed are not counted."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, verdicts: list[bool | None]) -> None:
        scored = [v for v in verdicts if v is not None]
        self.correct += float(sum(scored))
        self.total += float(len(scored))

    def compute(self) -> torch.Tensor:
        return self.correct / self.total if self.total > 0 else torch.tensor(float("nan"))


def reasoning_log_line(step: int, accuracy: float, problems: int, scored: int, timeouts: int, ranks: int) -> str:
    """One line per measurement; counts are totals over all ranks."""
    notes = [f"{problems} held-out problems" + (f" over {ranks} ranks" if ranks > 1 else "")]
    if scored != problems:
        notes.append(f"{scored} scored")
    if timeouts:
        notes.append(f"{timeouts} verification timeouts")
    return f"w2sr: step {step}: val/reasoning_acc = {accuracy:.3f} ({', '.join(notes)})"


class ReasoningAccuracy(Callback):
    """Generate on held-out problems, verify, and log ``val/reasoning_acc`` (plus ``val/truncated_rate``)."""

    def __init__(self, every_n_steps: int = 100, num_problems: int = 32, max_new_tokens: int = 1024,
                 batch_size: int = 16, temperature: float = 0.0, at_start: bool = True, at_end: bool = True,
                 use_chat_template: bool = True) -> None:
        """
        Args:
            every_n_steps: run every this many optimizer steps (0 = only at start/end).
            num_problems: held-out problems answered each time (split across ranks).
            at_start: measure the untrained student too, so the log shows before and after.
        """
        self.every_n_steps, self.num_problems = every_n_steps, num_problems
        self.sampling = SamplingOptions(n=1, temperature=temperature, max_new_tokens=max_new_tokens,
                                        batch_size=batch_size)
        self.at_start, self.at_end, self.use_chat_template = at_start, at_end, use_chat_template
        self.history: list[tuple[int, float]] = []
        self._last_step = -1

    def _held_out(self, trainer: Trainer) -> list[Any]:
        """The held-out problems answered each time, all ranks together (the same list on every rank)."""
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "validation_problems"):
            return []
        return datamodule.validation_problems()[:self.num_problems]

    def _problems(self, trainer: Trainer) -> list[Any]:
        return self._held_out(trainer)[trainer.global_rank::trainer.world_size]

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> float:
        """Answer this rank's share of the problems, reduce over ranks, log and return the accuracy.

        The value also goes into ``trainer.callback_metrics``, so ``ModelCheckpoint(monitor="val/reasoning_acc")``
        and ``EarlyStopping`` can use it.
        """
        from w2sr.verify import verify_completion

        accuracy_metric = ReasoningAccuracyMetric().to(pl_module.device)
        truncated_metric = MeanMetric().to(pl_module.device)
        traces = self._problems(trainer)
        if traces:
            tokenizer = pl_module.tokenizer
            prompts = [render_prompt(tokenizer, t.prompt, self.use_chat_template) for t in traces]
            completions = generate_completions(pl_module.model, tokenizer, prompts, self.sampling)
            verdicts, timeouts = [], 0
            for trace, (completion,) in zip(traces, completions):
                verdict = verify_completion(trace.problem.answer, completion.text, source=trace.problem.source,
                                            record=trace.problem.to_dict(),
                                            truncated=completion.finish_reason == "length")
                verdicts.append(verdict.correct)
                timeouts += verdict.status == "timeout"
                truncated_metric.update(float(completion.finish_reason == "length"))
            accuracy_metric.update(verdicts)
        else:
            timeouts = 0
        accuracy = float(accuracy_metric.compute())  # compute() reduces over ranks
        # what the log line reports, summed over ranks (every rank answers its share of the problems)
        scored, timeouts = (int(v) for v in trainer.strategy.reduce(
            torch.tensor([float(accuracy_metric.total), float(timeouts)], device=pl_module.device), reduce_op="sum"))
        truncated = float(truncated_metric.compute()) if truncated_metric.update_count or trainer.world_size > 1 \
            else float("nan")
        step = trainer.global_step
        self.history.append((step, accuracy))
        self._last_step = step
        values = {"val/reasoning_acc": accuracy, "val/truncated_rate": truncated}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        if trainer.logger is not None:  # log through the logger: valid at any hook, including on_train_end
            trainer.logger.log_metrics(values, step=step)
        rank_zero_info(reasoning_log_line(step, accuracy, len(self._held_out(trainer)), scored, timeouts,
                                          trainer.world_size))
        return accuracy

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_start:
            self.measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_end and trainer.global_step != self._last_step:
            self.measure(trainer, pl_module)


class TraceScoreWriter(BasePredictionWriter):
    """Writes ``w2sr predict`` results (per-trace NLL of the completion under the model) as JSONL.

    ``{"key": "<problem id>#<sample>", "nll": ..., "tokens": ...}`` per trace; with several GPUs each rank writes
    ``<output>.rank<N>``. Add it with ``--trainer.callbacks+=w2sr.callbacks.TraceScoreWriter
    --trainer.callbacks.output scores.jsonl``.
    """

    def __init__(self, output: str, overwrite: bool = False) -> None:
        super().__init__(write_interval="epoch")
        self.output, self.overwrite = output, overwrite

    def _path(self, trainer: Trainer) -> str:
        return self.output if trainer.world_size == 1 else f"{self.output}.rank{trainer.global_rank}"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from w2sr.jsonl import check_not_input, check_output

        data = getattr(trainer.datamodule, "hparams", {}) if trainer.datamodule is not None else {}
        source = data.get("predict_file") or data.get("train_file")
        check_not_input(self._path(trainer), {"data.predict_file": source}, option="trainer.callbacks.output")
        check_output(self._path(trainer), self.overwrite, option="--trainer.callbacks.overwrite")  # before any work

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        from w2sr.jsonl import write_jsonl

        rows = [row for batch in predictions for row in batch]
        write_jsonl(self._path(trainer), rows, overwrite=self.overwrite)
        rank_zero_info(f"w2sr: wrote {len(rows)} trace scores to {self._path(trainer)}")
