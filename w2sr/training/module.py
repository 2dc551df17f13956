"""The student: a LightningModule wrapping a Hugging Face causal LM with LoRA, QLoRA (4-bit NF4) or full fine-tuning.

The base model is built lazily in ``configure_model`` (so strategies such as FSDP/DeepSpeed can shard it and the CLI
can instantiate the module cheaply for every subcommand). The optimizer is an ``OptimizerCallable`` that receives
only the trainable parameters. Checkpoints keep only trainable weights (the adapter, for LoRA); at the end of
``fit`` the adapter (peft format) or the full model is exported with its tokenizer. The same module loads a model
(plus an optional adapter) for inference in ``w2sr generate`` / ``w2sr evaluate``.
Exercised by ``w2sr fit --config lightning_configs/quickstart.yaml`` and ``pytest tests/training/test_model.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric

from w2sr.records.jsonl import InputError
from w2sr.records.options import as_dict, as_options, check_choice
from w2sr.training import resume, speed
from w2sr.training.batching import Batch
from w2sr.training.export import export_student
from w2sr.training.export_dtype import weight_dtype
from w2sr.training.fit_checks import check_gradient_accumulation
from w2sr.training.loading import (
    LoraOptions,
    ModelDtype,
    ModelSpec,
    build_trainable,
    load_for_inference,
    load_tokenizer,
    require_model_path,
    resolve_quantization,
)
from w2sr.training.losses import LossImpl, TokenMean, resolve_loss_impl, token_nll_sum
from w2sr.training.schedule import SchedulerOptions
from w2sr.training.strategies import prepare_strategy

# jsonargparse runs this block at every start: names the CLI imports anyway, no peft / modeling code (see tests)
if TYPE_CHECKING:
    from lightning.pytorch import Callback
    from transformers import PreTrainedTokenizerBase
    from transformers.modeling_outputs import CausalLMOutputWithPast


@dataclass
class LogWindow:
    """What ``train/loss`` and ``train/tokens`` are made of since the last log, kept on the device (no host sync
    per step): the summed step losses, how many steps, the tokens trained."""

    loss_sum: torch.Tensor | float = 0.0
    steps: int = 0
    tokens: torch.Tensor | int = 0


class StudentModule(LightningModule):
    """A causal LM trained with token-level NLL on teacher completions (prompt tokens carry label -100)."""

    def __init__(
        self,
        model_name_or_path: str | None = None,
        tokenizer_name_or_path: str | None = None,
        adapter_path: str | None = None,
        finetune: Literal["lora", "full"] = "lora",
        lora: LoraOptions = LoraOptions(),
        quantization: Literal["auto", "none", "nf4"] = "auto",
        dtype: ModelDtype = "auto",
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: SchedulerOptions = SchedulerOptions(),
        export_dir: str | None = None,
        overwrite_export: bool = False,
        loss: LossImpl = "auto",
        loss_chunk_size: int = 1024,
        compile: bool = False,
        liger_kernels: bool = False,
        fused_optimizer: bool = False,
    ) -> None:
        """
        Args:
            model_name_or_path: hub id or local folder of the base model (the student; the teacher in ``generate``).
            tokenizer_name_or_path: defaults to ``model_name_or_path``.
            adapter_path: a peft adapter to start from (``fit``) or to evaluate (``evaluate``).
            finetune: ``lora`` (adapter only; QLoRA with ``quantization: nf4``) or ``full`` (all weights).
            quantization: ``nf4`` loads the base in 4-bit NF4 with double quantization (bitsandbytes, CUDA only);
                ``none`` in its dtype; ``auto`` (default): what ``adapter_path``'s student card says it was trained
                with (a QLoRA adapter is evaluated on its NF4 base), else ``none``. ``hparams.quantization`` holds
                the resolved value, ``quantization_source`` where it came from.
            dtype: weight dtype of the base model: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
            gradient_checkpointing: trade compute for memory (non-reentrant checkpointing).
            attn_implementation: transformers' attention (``sdpa``, ``flash_attention_2``, ``eager``) or
                ``sdpa_varlen`` (w2sr.training.attention: SDPA per packed example, for ``data.packing`` without
                flash-attn).
            trust_remote_code: run the model's own code from the hub (off: only transformers' architectures).
            optimizer: built with the trainable parameters only, e.g. ``torch.optim.AdamW`` with ``lr``.
            scheduler: learning-rate schedule with warmup, stepped per optimizer step.
            export_dir: where ``fit`` saves the adapter / model at the end (default ``<default_root_dir>/export``).
            overwrite_export: replace an existing export; otherwise ``fit`` refuses to start.
            loss: how the token NLL is computed from the last hidden states (``w2sr.training.losses``): ``naive`` (full
                float32 logits, as HF), ``chunked`` (LM head + cross-entropy per checkpointed chunk: no full
                logits), ``liger`` (liger-kernel's fused linear cross-entropy, CUDA), ``auto`` (liger on CUDA when
                installed, else chunked).
            loss_chunk_size: target tokens per chunk of the chunked loss.
            compile: ``torch.compile`` each decoder layer (``w2sr.training.speed``; not under DeepSpeed).
            liger_kernels: Liger's RMSNorm / SwiGLU / RoPE kernels for the architectures Liger supports (CUDA).
            fused_optimizer: a plain ``torch.optim.AdamW``/``Adam`` without a fused/foreach choice runs fused.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        # ``auto`` -> the adapter card's quantization or none, once, so every stage (and the card) sees the real one
        self.hparams.quantization, self.quantization_source = resolve_quantization(quantization, adapter_path)
        self.optimizer_factory = optimizer
        self.model: torch.nn.Module | None = None  # a transformers PreTrainedModel, or a peft PeftModel around one
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.exported_to: str | None = None
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self._configured_groups: list[dict[str, Any]] = []
        if attn_implementation == "sdpa_varlen":  # per-example attention inside packed rows (w2sr.training.attention)
            from w2sr.training.attention import register

            register()
        check_choice(loss, LossImpl, "model.loss")
        if liger_kernels:
            speed.require_liger()  # before any model is loaded
        self.loss_impl: str | None = None  # resolved on the first step (it depends on the device)
        self.val_loss = TokenMean()  # MeanMetric's NaN check would be a host sync per batch
        self.test_loss = TokenMean()
        self._step_nll = 0.0
        self._window = LogWindow()
        self._warned_no_plan = False

    # ----------------------------------------------------------------------------------------------- loading
    def _require_model_path(self) -> str:
        """``model.model_name_or_path``, or a clear error naming it (the vLLM backend asks too)."""
        return require_model_path(self.spec)

    @property
    def spec(self) -> ModelSpec:
        """Which model to load and how: the loaders' view of the hyper-parameters."""
        return ModelSpec.from_hparams(self.hparams)

    def _under_fsdp(self) -> bool:
        # LightningModule._trainer (private): ``self.trainer`` raises before the module is attached
        return self._trainer is not None and "FSDP" in type(self._trainer.strategy).__name__

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(
                self.hparams.tokenizer_name_or_path or require_model_path(self.spec), self.hparams.trust_remote_code
            )
        return self.tokenizer

    def configure_model(self) -> None:
        """Build the trainable model once (Lightning calls this at every stage; it must be idempotent)."""
        if self.model is not None:
            return
        self.load_tokenizer()
        self.model = build_trainable(self.spec, under_fsdp=self._under_fsdp())
        device = self._trainer.strategy.root_device if self._trainer is not None else self.device
        if self.hparams.get("liger_kernels"):
            rank_zero_info(f"w2sr: Liger kernels for {speed.apply_liger_kernels(self.model, device)}")
        if self.hparams.get("compile"):
            speed.check_compile(type(self._trainer.strategy).__name__ if self._trainer else "", device)
            rank_zero_info(f"w2sr: compiled {speed.compile_decoder_layers(self.model)} decoder layers")

    def load_for_inference(
        self, device: torch.device | str | None = None
    ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
        """``(model, tokenizer)`` for generation: the base, plus ``adapter_path`` when given, in eval mode."""
        tokenizer = self.load_tokenizer()
        return load_for_inference(self.spec, device), tokenizer

    @property
    def label(self) -> str:
        """A short name for reports: the model and adapter."""
        name = str(self.hparams.model_name_or_path)
        return name + (f" + {self.hparams.adapter_path}" if self.hparams.adapter_path else "")

    # ---------------------------------------------------------------------------------------------- training
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> CausalLMOutputWithPast:
        """The HF model's output; packed batches pass ``position_ids`` and no attention mask."""
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            position_ids=position_ids,
            use_cache=False,
        )

    def configure_callbacks(self) -> list[Callback]:
        """A ``w2sr.runtime.cost.CostMeter`` (``<default_root_dir>/cost.json``) unless the trainer has one."""
        from w2sr.runtime.cost import default_meters

        return default_meters(self.trainer, stage="fit")

    def on_fit_start(self) -> None:
        """Once per fit, before the first batch (``w2sr fit`` checked it before loading anything): refuse a strategy
        that accumulates gradients by itself."""
        check_gradient_accumulation(self.trainer)

    def on_train_start(self) -> None:
        """Resume the training data where the checkpoint left it, and the optimizer settings you pass
        (``w2sr.training.resume``)."""
        resume.load_pending_loader_states(self.trainer)
        if self.trainer.ckpt_path and self._configured_groups:
            resume.apply_configured_optimizer(self.trainer, self._configured_groups)

    def nll_sum(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum of the target tokens' NLL, number of target tokens)`` of one micro-batch."""
        if self.loss_impl is None:
            self.loss_impl = resolve_loss_impl(self.hparams.loss, self.device)
            rank_zero_info(f"w2sr: loss implementation: {self.loss_impl}")
        return token_nll_sum(self.model, batch, self.loss_impl, self.hparams.loss_chunk_size)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Token-weighted loss: ``sum NLL / target tokens of the whole optimizer step`` (all micro-batches, all
        ranks; ``batch["step_tokens"]`` from ``w2sr.training.batching``). Lightning divides the returned loss by
        ``accumulate_grad_batches`` and DDP averages gradients over ranks, so both factors are put back here: the
        gradient of a step is exactly that of the sum of its token NLLs over its target tokens. Under DeepSpeed too:
        ``W2SRDeepSpeedStrategy`` keeps accumulation Lightning's (no second division by the engine, steps where the
        plan's steps end); a strategy that accumulates by itself is refused before fit starts
        (``w2sr.training.fit_checks.check_gradient_accumulation``)."""
        trainer = self.trainer
        nll, tokens = self.nll_sum(batch)
        if "step_tokens" in batch:
            scale = trainer.accumulate_grad_batches * trainer.world_size / max(1, int(batch["step_tokens"]))
            step_end = bool(batch["step_end"])
        else:  # a loader without a step plan: per-micro-batch mean (the old behaviour)
            if not self._warned_no_plan:
                rank_zero_warn("w2sr: batches carry no step_tokens; the loss is a per-micro-batch token mean")
                self._warned_no_plan = True
            scale, step_end = 1.0 / max(1, int(tokens)), True
        loss = nll * scale
        # the step's loss for the log: sum over its micro-batches here, mean over ranks (each holds world x share)
        share = loss.detach() / trainer.accumulate_grad_batches if "step_tokens" in batch else loss.detach()
        self._step_nll = share + self._step_nll  # a tensor: no device sync per micro-batch
        self._log_train(step_end, tokens)
        return loss

    def _log_train(self, step_end: bool, tokens: torch.Tensor) -> None:
        """``train/loss`` (mean of the optimizer steps since the last log, over ranks) and ``train/tokens`` (summed
        over the epoch and ranks), accumulated on the device and logged every ``trainer.log_every_n_steps`` steps
        and at the epoch's end (then even off Lightning's log steps): one host sync per log, none per step. The values
        are logged as CPU tensors, since Lightning reads a progress-bar value back to the host after every batch."""
        window, trainer = self._window, self.trainer
        window.tokens = tokens + window.tokens
        if not step_end:
            return
        window.loss_sum, window.steps, self._step_nll = self._step_nll + window.loss_sum, window.steps + 1, 0.0
        step, every = trainer.global_step + 1, trainer.log_every_n_steps  # this micro-batch ends step `step`
        last = trainer.is_last_batch or (trainer.max_steps > 0 and step >= trainer.max_steps)
        if not (last or (every and step % every == 0)):
            return
        values = torch.stack(
            [
                torch.as_tensor(window.loss_sum, device=self.device, dtype=torch.float32) / window.steps,
                torch.as_tensor(window.tokens, device=self.device, dtype=torch.float32),
            ]
        )
        loss, seen = (
            trainer.strategy.reduce(values, reduce_op="sum") / torch.tensor([trainer.world_size, 1], device=self.device)
        ).cpu()
        self._window = LogWindow()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=1)
        self.log("train/tokens", seen, reduce_fx="sum", on_step=False, on_epoch=True, batch_size=1)
        if last and not (every and step % every == 0) and not trainer.should_stop and trainer.is_global_zero:
            for logger in trainer.loggers:  # Lightning writes on_step values only on its log steps (issue 28.3)
                logger.log_metrics({"train/loss": float(loss), "epoch": trainer.current_epoch}, trainer.global_step)

    def _eval_step(self, batch: Batch, metric: MeanMetric, name: str) -> torch.Tensor:
        nll, tokens = self.nll_sum(batch)
        # weighted mean = sum NLL / tokens over the epoch and ranks; no host sync (a batch without targets weighs 0)
        metric.update(nll / tokens.clamp(min=1), weight=tokens)
        self.log(name, metric, prog_bar=True, on_step=False, on_epoch=True)
        return nll / tokens.clamp(min=1)

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, self.val_loss, "val/loss")

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, self.test_loss, "test/loss")

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, str | float | int]]:
        """Per-trace negative log-likelihood of the completion under the model (``w2sr predict``): how surprising
        each teacher trace is to the student, e.g. to compare W2SR-P and W2SR-N traces."""
        logits = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            use_cache=False,
        ).logits
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )
        counts = (labels != -100).sum(dim=1)
        totals = losses.sum(dim=1)
        return [
            {"key": key, "nll": float(total / max(1, int(count))), "tokens": int(count)}
            for key, total, count in zip(batch["keys"], totals, counts)
        ]

    def configure_optimizers(self) -> Any:
        from transformers import get_scheduler

        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("no trainable parameters")
        optimizer = self.optimizer_factory(params)
        if self.hparams.get("fused_optimizer"):
            optimizer, done = speed.fuse_adamw(optimizer)
            rank_zero_info(f"w2sr: optimizer: {done}")
        # the configured settings, re-applied over a restored optimizer state on resume (on_train_start)
        self._configured_groups = [
            {k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups
        ]
        sched = as_options(self.hparams.scheduler, SchedulerOptions)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_scheduler(
            sched.name, optimizer, num_warmup_steps=int(sched.warmup_ratio * total), num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------ checkpoint / export
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights (``w2sr.training.resume.keep_trainable_weights``)."""
        resume.keep_trainable_weights(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check every trainable weight is there (``w2sr.training.resume.check_trainable_weights``)."""
        resume.check_trainable_weights(self, checkpoint)

    def export_path(self) -> Path:
        root = self.trainer.default_root_dir if self._trainer is not None else "."  # _trainer: see _under_fsdp
        return Path(self.hparams.export_dir or os.path.join(root, "export"))

    def check_export(self) -> None:
        """Refuse to start a run whose export would replace an earlier one (unless ``overwrite_export``)."""
        path = self.export_path()
        if path.exists() and any(path.iterdir()) and not self.hparams.overwrite_export:
            raise InputError(
                "export folder exists and is not empty; set model.overwrite_export true or "
                "choose another model.export_dir",
                path=path,
                field="model.export_dir",
            )

    def setup(self, stage: str) -> None:
        """Before ``configure_model``: refuse a run whose export exists; give FSDP its per-layer wrap policy."""
        if stage == "fit":
            self.check_export()
        prepare_strategy(self.trainer.strategy, hf_checkpointing=self.hparams.gradient_checkpointing)

    def _student_card(self) -> dict[str, Any]:
        lora = as_dict(self.hparams.lora) if self.hparams.finetune == "lora" else None
        return {
            "base_model": self.hparams.model_name_or_path,
            "finetune": self.hparams.finetune,
            "quantization": self.hparams.quantization,
            "dtype": weight_dtype(self.model),  # what `w2sr export` merges in unless --dtype says otherwise
            "precision": str(self.trainer.precision),
            "lora": lora,
            "global_step": self.trainer.global_step,
        }

    def on_train_end(self) -> None:
        """Save the adapter (peft format) or the full model, with the tokenizer, for ``evaluate`` and users.

        Written atomically by :func:`w2sr.training.export.export_student` (a staging folder renamed into place), on
        every strategy: DDP saves on rank 0, FSDP consolidates the ranks' shards, DeepSpeed ZeRO-3 gathers per module.
        """
        path = self.export_path()
        if self.trainer.is_global_zero and path.exists():
            self.check_export()  # still allowed: the run was started with overwrite_export
        export_student(self, path, self._student_card(), overwrite=True)
        self.exported_to = str(path)
