"""Callbacks for ``w2sr fit``: reasoning accuracy on held-out problems while the student trains.

``ReasoningAccuracy`` generates answers for a few validation problems every N optimizer steps (and at the start and
end of training), verifies them against gold and logs ``val/reasoning_acc`` through a torchmetrics metric, which
sums correct/total over all ranks (each rank answers its share of the problems). Add it from YAML::

    trainer:
      callbacks:
        - class_path: w2sr.callbacks.ReasoningAccuracy
          init_args: {every_n_steps: 50, num_problems: 32}

``Throughput`` logs tokens/s, target tokens/s, the padding share, an MFU estimate and the peak GPU memory every N
optimizer steps, and sums the whole fit up in one line at its end.

Exercised by ``w2sr fit --config lightning_configs/quickstart.yaml`` and ``pytest tests/training/test_callbacks.py``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric, Metric

from w2sr.generation.base import SamplingOptions
from w2sr.generation.hf import generate_completions
from w2sr.records.prompts import render_prompt
from w2sr.runtime.cost import CostMeter  # noqa: F401 - re-exported as w2sr.callbacks.CostMeter
from w2sr.training.batching import Batch


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

    def __init__(
        self,
        every_n_steps: int = 100,
        num_problems: int = 32,
        max_new_tokens: int = 1024,
        batch_size: int = 16,
        temperature: float = 0.0,
        at_start: bool = True,
        at_end: bool = True,
        use_chat_template: bool = True,
        grader: Literal["paper", "default", "lenient"] = "default",
    ) -> None:
        """
        Args:
            every_n_steps: run every this many optimizer steps (0 = only at start/end).
            num_problems: held-out problems answered each time (split across ranks).
            at_start: measure the untrained student too, so the log shows before and after.
            grader: the answer rule (``w2sr verify --options.grader``): ``paper`` (the last box only) as the paper's
                evaluation, ``default`` or ``lenient``.
        """
        self.every_n_steps, self.num_problems = every_n_steps, num_problems
        self.sampling = SamplingOptions(
            n=1, temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        self.at_start, self.at_end, self.use_chat_template = at_start, at_end, use_chat_template
        self.grader = grader
        self.history: list[tuple[int, float]] = []
        self._last_step = -1

    def _held_out(self, trainer: Trainer) -> list[Any]:
        """The held-out problems answered each time, all ranks together (the same list on every rank)."""
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "validation_problems"):
            return []
        return datamodule.validation_problems()[: self.num_problems]

    def _problems(self, trainer: Trainer) -> list[Any]:
        return self._held_out(trainer)[trainer.global_rank :: trainer.world_size]

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> float:
        """Answer this rank's share of the problems, reduce over ranks, log and return the accuracy.

        The value also goes into ``trainer.callback_metrics``, so ``ModelCheckpoint(monitor="val/reasoning_acc")``
        and ``EarlyStopping`` can use it.
        """
        from w2sr.verification.grade import VerifyOptions, verify_completion

        options = VerifyOptions(grader=self.grader)

        accuracy_metric = ReasoningAccuracyMetric().to(pl_module.device)
        truncated_metric = MeanMetric().to(pl_module.device)
        traces = self._problems(trainer)
        if traces:
            tokenizer = pl_module.tokenizer
            prompts = [render_prompt(tokenizer, t.prompt, self.use_chat_template) for t in traces]
            completions = generate_completions(pl_module.model, tokenizer, prompts, self.sampling)
            verdicts, timeouts = [], 0
            for trace, (completion,) in zip(traces, completions):
                verdict = verify_completion(
                    trace.problem.answer,
                    completion.text,
                    source=trace.problem.source,
                    record=trace.problem.to_dict(),
                    truncated=completion.finish_reason == "length",
                    options=options,
                )
                verdicts.append(verdict.correct)
                timeouts += verdict.status == "timeout"
                truncated_metric.update(float(completion.finish_reason == "length"))
            accuracy_metric.update(verdicts)
        else:
            timeouts = 0
        accuracy = float(accuracy_metric.compute())  # compute() reduces over ranks
        # what the log line reports, summed over ranks (every rank answers its share of the problems)
        scored, timeouts = (
            int(v)
            for v in trainer.strategy.reduce(
                torch.tensor([float(accuracy_metric.total), float(timeouts)], device=pl_module.device), reduce_op="sum"
            )
        )
        truncated = (
            float(truncated_metric.compute())
            if truncated_metric.update_count or trainer.world_size > 1
            else float("nan")
        )
        step = trainer.global_step
        self.history.append((step, accuracy))
        self._last_step = step
        values = {"val/reasoning_acc": accuracy, "val/truncated_rate": truncated}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        for logger in trainer.loggers:  # through the loggers (every one): valid at any hook, including on_train_end
            logger.log_metrics(values, step=step)
        rank_zero_info(
            reasoning_log_line(step, accuracy, len(self._held_out(trainer)), scored, timeouts, trainer.world_size)
        )
        return accuracy

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_start:
            self.measure(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
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
        from w2sr.records.jsonl import check_not_input, check_output

        data = getattr(trainer.datamodule, "hparams", {}) if trainer.datamodule is not None else {}
        source = data.get("predict_file") or data.get("train_file")
        check_not_input(self._path(trainer), {"data.predict_file": source}, option="trainer.callbacks.output")
        check_output(self._path(trainer), self.overwrite, option="--trainer.callbacks.overwrite")  # before any work

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        from w2sr.records.jsonl import write_jsonl

        rows = [row for batch in predictions for row in batch]
        write_jsonl(self._path(trainer), rows, overwrite=self.overwrite)
        rank_zero_info(f"w2sr: wrote {len(rows)} trace scores to {self._path(trainer)}")


class Throughput(Callback):
    """Training speed: ``throughput/{tokens_per_s, target_tokens_per_s, padding_share, mfu, peak_gpu_mem_gib}``.

    Counted over all ranks: *tokens* are real (non-pad) tokens, *target tokens* those with a loss, the *padding
    share* is the share of token slots in the batches that hold padding. MFU = model FLOPs per second / peak FLOPs
    of all devices, with ``2 x parameters + 2 x layers x hidden x context`` forward FLOPs per token (causal
    attention), times 3 for full fine-tuning (backward = 2 forwards) or 2 when the base weights are frozen (LoRA:
    no weight gradients); recomputation by gradient checkpointing is not counted, as in the PaLM definition.
    ``peak_tflops`` is per device (e.g. 989 for an H100 SXM in bf16); on CUDA it defaults to Lightning's table
    (``get_available_flops``). Add it from YAML::

        trainer:
          callbacks:
            - class_path: w2sr.callbacks.Throughput
              init_args: {log_every_n_steps: 10, peak_tflops: 989}
    """

    def __init__(self, log_every_n_steps: int = 10, peak_tflops: float | None = None) -> None:
        self.log_every_n_steps, self.peak_tflops = log_every_n_steps, peak_tflops
        self.summary: dict[str, float] = {}
        self._window = torch.zeros(4, dtype=torch.float64)  # tokens, targets, slots, flop-tokens (context)
        self._total = torch.zeros(4, dtype=torch.float64)
        self._fit_start = self._resume = 0.0
        self._window_seconds = self._train_seconds = 0.0
        self._running = False
        self._last_step = -1
        self._model_shape: tuple[float, int, int, float] | None = None

    # ------------------------------------------------------------------------------------------ counting
    def _shape(self, pl_module: LightningModule) -> tuple[float, int, int, float]:
        """(parameters, layers, hidden size, backward factor) of the model being trained."""
        if self._model_shape is None:
            model = pl_module.model if getattr(pl_module, "model", None) is not None else pl_module
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            params = (
                float(base.num_parameters())
                if hasattr(base, "num_parameters")
                else float(sum(p.numel() for p in base.parameters()))
            )
            config = getattr(base, "config", None)
            config = config.get_text_config() if hasattr(config, "get_text_config") else config
            layers = int(getattr(config, "num_hidden_layers", 0) or 0)
            hidden = int(getattr(config, "hidden_size", 0) or 0)
            frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
            factor = 2.0 if frozen > 0.5 * sum(p.numel() for p in model.parameters()) else 3.0
            self._model_shape = (params, layers, hidden, factor)
        return self._model_shape

    @staticmethod
    def _counts(batch: Batch) -> tuple[float, float, float, float]:
        ids = batch["input_ids"]
        slots = float(ids.numel())
        tokens = (
            float(batch["num_tokens"])
            if "num_tokens" in batch
            else float(batch["attention_mask"].sum())
            if batch.get("attention_mask") is not None
            else slots
        )
        targets = (
            float(batch["num_targets"]) if "num_targets" in batch else float((batch["labels"][:, 1:] != -100).sum())
        )
        # attention FLOPs grow with the context: sum over tokens of their row width (an upper bound when packed)
        return tokens, targets, slots, tokens * ids.shape[1]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = self._resume = time.perf_counter()
        self._running = True
        self._last_step = trainer.global_step
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        if self.peak_tflops is None and pl_module.device.type == "cuda":
            from lightning.fabric.utilities.throughput import get_available_flops

            flops = get_available_flops(pl_module.device, str(trainer.precision))
            self.peak_tflops = flops / 1e12 if flops else None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._window += torch.tensor(self._counts(batch), dtype=torch.float64)
        step = trainer.global_step
        if self.log_every_n_steps and step != self._last_step and step % self.log_every_n_steps == 0:
            self._last_step = step
            self._flush(trainer, pl_module, log=True)

    def _reduce(self, trainer: Trainer, pl_module: LightningModule, values: torch.Tensor) -> torch.Tensor:
        if trainer.world_size == 1:
            return values
        return trainer.strategy.reduce(values.to(pl_module.device), reduce_op="sum").cpu().double()

    def _metrics(
        self, pl_module: LightningModule, totals: torch.Tensor, seconds: float, world_size: int
    ) -> dict[str, float]:
        tokens, targets, slots, context = totals.tolist()
        seconds = max(seconds, 1e-9)
        metrics = {
            "throughput/tokens_per_s": tokens / seconds,
            "throughput/target_tokens_per_s": targets / seconds,
            "throughput/padding_share": 1 - tokens / slots if slots else 0.0,
        }
        params, layers, hidden, factor = self._shape(pl_module)
        flops = factor * (2 * params * tokens + 2 * layers * hidden * context)
        metrics["throughput/tflops_per_s"] = flops / seconds / 1e12
        if self.peak_tflops:
            metrics["throughput/mfu"] = metrics["throughput/tflops_per_s"] / (self.peak_tflops * world_size)
        if pl_module.device.type == "cuda":
            metrics["throughput/peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        return metrics

    def _flush(self, trainer: Trainer, pl_module: LightningModule, log: bool) -> None:
        if self._running:
            self._window_seconds += time.perf_counter() - self._resume
        window = self._reduce(trainer, pl_module, self._window)
        self._total += window
        self._train_seconds += self._window_seconds
        metrics = self._metrics(pl_module, window, self._window_seconds, trainer.world_size)
        self._window_seconds = 0.0
        if "throughput/peak_gpu_mem_gib" in metrics and trainer.world_size > 1:
            peak = torch.tensor(metrics["throughput/peak_gpu_mem_gib"], device=pl_module.device)
            metrics["throughput/peak_gpu_mem_gib"] = float(trainer.strategy.reduce(peak, reduce_op="max"))
        self._window.zero_()
        if log:
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=trainer.global_step)
        self._resume = time.perf_counter()  # the reduction and logging are not counted as training time

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and self._running:  # validation inside fit: stop the clock
            self._window_seconds += time.perf_counter() - self._resume
            self._running = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and not self._running and self._fit_start:
            self._resume, self._running = time.perf_counter(), True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._flush(trainer, pl_module, log=False)
        self.summary = self._metrics(pl_module, self._total, self._train_seconds, trainer.world_size)
        self.summary.update(
            tokens=float(self._total[0]),
            target_tokens=float(self._total[1]),
            train_seconds=self._train_seconds,
            wall_seconds=time.perf_counter() - self._fit_start,
        )
        s = self.summary
        parts = [
            f"{s['tokens']:,.0f} tokens ({s['target_tokens']:,.0f} targets) in {s['train_seconds']:.1f} s",
            f"{s['throughput/tokens_per_s']:,.0f} tok/s",
            f"{s['throughput/target_tokens_per_s']:,.0f} target tok/s",
            f"padding {100 * s['throughput/padding_share']:.1f}%",
            f"{s['throughput/tflops_per_s']:.3g} TFLOP/s",
        ]
        if "throughput/mfu" in s:
            parts.append(f"MFU {100 * s['throughput/mfu']:.1f}%")
        if "throughput/peak_gpu_mem_gib" in s:
            parts.append(f"peak GPU memory {s['throughput/peak_gpu_mem_gib']:.2f} GiB")
        rank_zero_info("w2sr: throughput: " + ", ".join(parts))
