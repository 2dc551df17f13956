"""The student: a LightningModule wrapping a Hugging Face causal LM with LoRA, QLoRA (4-bit NF4) or full fine-tuning.

The base model is built lazily in ``configure_model`` (so strategies such as FSDP/DeepSpeed can shard it and the CLI
can instantiate the module cheaply for every subcommand). The optimizer is an ``OptimizerCallable`` that receives
only the trainable parameters. Checkpoints keep only trainable weights (the adapter, for LoRA); at the end of
``fit`` the adapter (peft format) or the full model is exported with its tokenizer. The same module loads a model
(plus an optional adapter) for inference in ``w2sr generate`` / ``w2sr evaluate``.
Exercised by ``w2sr fit --config lightning_configs/quickstart.yaml`` and ``pytest tests/test_model.py``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from torchmetrics import MeanMetric

from w2sr.records.jsonl import InputError
from w2sr.training.losses import LOSS_IMPLS, LossImpl, resolve_loss_impl, token_nll_sum

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraOptions:
    """LoRA adapter settings (peft). ``target_modules: all-linear`` adapts every linear layer but the LM head."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class SchedulerOptions:
    """Learning-rate schedule stepped every optimizer step: linear warmup for ``warmup_ratio`` of the steps."""

    name: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = 0.1


def resolve_dtype(dtype: str, full_finetune: bool = False) -> torch.dtype:
    """``auto`` = bfloat16 on a GPU that supports it, else float32; always float32 for trainable full weights.

    Weights that are trained in pure bfloat16 lose most small updates (at lr 1e-5 most weights never change):
    full fine-tuning keeps float32 master weights and gets its speed from ``trainer.precision: bf16-mixed``.
    """
    if dtype == "auto":
        if full_finetune:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose auto or one of {sorted(DTYPES)}", field="model.dtype")
    return DTYPES[dtype]


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer, with a pad token (EOS when the tokenizer has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class StudentModule(LightningModule):
    """A causal LM trained with token-level NLL on teacher completions (prompt tokens carry label -100)."""

    def __init__(
        self,
        model_name_or_path: str | None = None,
        tokenizer_name_or_path: str | None = None,
        adapter_path: str | None = None,
        finetune: Literal["lora", "full"] = "lora",
        lora: LoraOptions = LoraOptions(),
        quantization: Literal["none", "nf4"] = "none",
        dtype: str = "auto",
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: SchedulerOptions = SchedulerOptions(),
        export_dir: str | None = None,
        overwrite_export: bool = False,
        loss: LossImpl = "auto",
        loss_chunk_size: int = 1024,
    ) -> None:
        """
        Args:
            model_name_or_path: hub id or local folder of the base model (the student; the teacher in ``generate``).
            tokenizer_name_or_path: defaults to ``model_name_or_path``.
            adapter_path: a peft adapter to start from (``fit``) or to evaluate (``evaluate``).
            finetune: ``lora`` (adapter only; QLoRA with ``quantization: nf4``) or ``full`` (all weights).
            quantization: ``nf4`` loads the base in 4-bit NF4 with double quantization (bitsandbytes, CUDA only).
            dtype: weight dtype of the base model: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
            gradient_checkpointing: trade compute for memory (non-reentrant checkpointing).
            attn_implementation: transformers' attention (``sdpa``, ``flash_attention_2``, ``eager``) or
                ``sdpa_varlen`` (w2sr.training.attention: SDPA per packed example, for ``data.packing`` without flash-attn).
            optimizer: built with the trainable parameters only, e.g. ``torch.optim.AdamW`` with ``lr``.
            scheduler: learning-rate schedule with warmup, stepped per optimizer step.
            export_dir: where ``fit`` saves the adapter / model at the end (default ``<default_root_dir>/export``).
            overwrite_export: replace an existing export; otherwise ``fit`` refuses to start.
            loss: how the token NLL is computed from the last hidden states (``w2sr.training.losses``): ``naive`` (full
                float32 logits, as HF), ``chunked`` (LM head + cross-entropy per checkpointed chunk: no full
                logits), ``liger`` (liger-kernel's fused linear cross-entropy, CUDA), ``auto`` (liger on CUDA when
                installed, else chunked).
            loss_chunk_size: target tokens per chunk of the chunked loss.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.model: Any = None
        self.tokenizer: Any = None
        self.exported_to: str | None = None
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self._configured_groups: list[dict[str, Any]] = []
        if attn_implementation == "sdpa_varlen":  # per-example attention inside packed rows (w2sr.training.attention)
            from w2sr.training.attention import register

            register()
        if loss not in LOSS_IMPLS:
            raise InputError(f"unknown loss {loss!r}; choose one of {list(LOSS_IMPLS)}", field="model.loss")
        self.loss_impl: str | None = None  # resolved on the first step (it depends on the device)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self._step_nll = 0.0
        self._warned_no_plan = False

    # ----------------------------------------------------------------------------------------------- loading
    def _require_model_path(self) -> str:
        if not self.hparams.model_name_or_path:
            raise InputError("no model given: set model.model_name_or_path (a hub id or a local folder)",
                             field="model.model_name_or_path")
        return self.hparams.model_name_or_path

    def _load_base(self, for_training: bool) -> Any:
        from transformers import AutoModelForCausalLM

        hp = self.hparams
        full = for_training and hp.finetune == "full"
        if full and hp.dtype in ("bfloat16", "float16"):
            rank_zero_warn(f"w2sr: full fine-tuning with {hp.dtype} weights loses small updates; prefer "
                           "model.dtype auto/float32 with trainer.precision bf16-mixed")
        # FSDP flattens each wrapped layer into one tensor of one dtype: a LoRA base under FSDP is loaded like full
        # fine-tuning's (float32, bf16 compute through the strategy's mixed precision), so it matches the adapters
        uniform = full or (for_training and self._under_fsdp())
        kwargs: dict[str, Any] = dict(dtype=resolve_dtype(hp.dtype, uniform), trust_remote_code=hp.trust_remote_code)
        if hp.attn_implementation:
            kwargs["attn_implementation"] = hp.attn_implementation
        if hp.quantization == "nf4":
            if not torch.cuda.is_available():
                raise InputError("nf4 needs a CUDA GPU (bitsandbytes 4-bit); use quantization: none on this machine",
                                 field="model.quantization")
            if for_training and hp.finetune == "full":
                raise InputError("full fine-tuning of a 4-bit model is not possible: use finetune: lora (QLoRA)",
                                 field="model.quantization")
            from transformers import BitsAndBytesConfig

            compute = kwargs["dtype"] if kwargs["dtype"] != torch.float32 else torch.bfloat16
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=compute)
            kwargs["device_map"] = {"": torch.cuda.current_device()}
        return AutoModelForCausalLM.from_pretrained(self._require_model_path(), **kwargs)

    def _under_fsdp(self) -> bool:
        return self._trainer is not None and "FSDP" in type(self._trainer.strategy).__name__

    def load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.hparams.tokenizer_name_or_path or self._require_model_path(),
                                            self.hparams.trust_remote_code)
        return self.tokenizer

    def configure_model(self) -> None:
        """Build the trainable model once (Lightning calls this at every stage; it must be idempotent)."""
        if self.model is not None:
            return
        hp = self.hparams
        self.load_tokenizer()
        model = self._load_base(for_training=True)
        if hp.finetune == "lora":
            from peft import LoraConfig, PeftModel, get_peft_model

            if hp.adapter_path:
                model = PeftModel.from_pretrained(model, hp.adapter_path, is_trainable=True)
            else:
                lora = hp.lora if isinstance(hp.lora, LoraOptions) else LoraOptions(**dict(hp.lora))
                model = get_peft_model(model, LoraConfig(
                    r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                    target_modules=lora.target_modules, task_type="CAUSAL_LM"))
        elif hp.adapter_path:
            raise InputError("adapter_path is for finetune: lora", field="model.adapter_path")
        if self._under_fsdp():  # one dtype per FSDP unit: adapters follow an explicitly chosen base dtype
            base_dtype = next(p.dtype for p in model.parameters() if not p.requires_grad) \
                if any(not p.requires_grad for p in model.parameters()) else None
            mixed = [p for p in model.parameters() if p.requires_grad and base_dtype and p.dtype != base_dtype]
            if mixed:
                rank_zero_warn(f"w2sr: FSDP needs one dtype per layer: the adapters are cast to {base_dtype} (use "
                               "model.dtype auto for float32 weights with bf16-mixed compute)")
                for param in mixed:
                    param.data = param.data.to(base_dtype)
        if hp.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        model.train()  # from_pretrained returns eval mode, where dropout and HF gradient checkpointing are off
        self.model = model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        rank_zero_info(f"w2sr: {hp.finetune} fine-tuning of {hp.model_name_or_path}: "
                       f"{trainable:,} trainable of {total:,} parameters")

    def load_for_inference(self, device: torch.device | str | None = None) -> tuple[Any, Any]:
        """``(model, tokenizer)`` for generation: the base, plus ``adapter_path`` when given, in eval mode."""
        tokenizer = self.load_tokenizer()
        model = self._load_base(for_training=False)
        if self.hparams.adapter_path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.hparams.adapter_path)
        if device is not None and self.hparams.quantization != "nf4":
            model = model.to(device)
        model.eval()
        return model, tokenizer

    @property
    def label(self) -> str:
        """A short name for reports: the model and adapter."""
        name = str(self.hparams.model_name_or_path)
        return name + (f" + {self.hparams.adapter_path}" if self.hparams.adapter_path else "")

    # ---------------------------------------------------------------------------------------------- training
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> Any:
        """The HF model's output; packed batches pass ``position_ids`` and no attention mask."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                          position_ids=position_ids, use_cache=False)

    def on_train_start(self) -> None:
        """Resume the training data where the checkpoint left it (``w2sr.training.batching.StepDataLoader``).

        Lightning loads a dataloader's state in ``FitLoop.setup_data``; when ``estimated_stepping_batches`` (the
        LR schedule's length, asked in ``configure_optimizers``) built the loader before the checkpoint was
        restored, that load was skipped and the epoch would replay from its first batch. Load it here instead.
        """
        fit_loop = self.trainer.fit_loop
        if getattr(fit_loop, "_combined_loader_states_to_load", None):
            fit_loop._load_combined_loader_states()
        if self.trainer.ckpt_path and self._configured_groups:
            self._apply_configured_optimizer()

    def _apply_configured_optimizer(self) -> None:
        """On resume, the optimizer settings you pass (lr, weight decay, betas, ...) win over the checkpoint's:
        restoring the optimizer state would otherwise bring back the old ones with its moments. The schedule's base
        learning rate follows, and the current one is recomputed at the restored step."""
        optimizer = self.trainer.optimizers[0]
        for group, configured in zip(optimizer.param_groups, self._configured_groups):
            group.update(configured)
            group["initial_lr"] = configured["lr"]
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [group["lr"] for group in self._configured_groups]
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if lambdas:
                for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, lambdas):
                    group["lr"] = base * factor(scheduler.last_epoch)
                scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    def nll_sum(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum of the target tokens' NLL, number of target tokens)`` of one micro-batch."""
        if self.loss_impl is None:
            self.loss_impl = resolve_loss_impl(self.hparams.loss, self.device)
            rank_zero_info(f"w2sr: loss implementation: {self.loss_impl}")
        return token_nll_sum(self.model, batch, self.loss_impl, self.hparams.loss_chunk_size)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Token-weighted loss: ``sum NLL / target tokens of the whole optimizer step`` (all micro-batches, all
        ranks; ``batch["step_tokens"]`` from ``w2sr.training.batching``). Lightning divides the returned loss by
        ``accumulate_grad_batches`` and DDP averages gradients over ranks, so both factors are put back here: the
        gradient of a step is exactly that of the sum of its token NLLs over its target tokens."""
        nll, tokens = self.nll_sum(batch)
        trainer = self.trainer
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
        if step_end:
            self.log("train/loss", self._step_nll, prog_bar=True, on_step=True,
                     on_epoch=False, sync_dist=True, batch_size=1)
            self._step_nll = 0.0
        self.log("train/tokens", tokens.float(), reduce_fx="sum", on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: dict[str, Any], metric: MeanMetric, name: str) -> torch.Tensor:
        nll, tokens = self.nll_sum(batch)
        if int(tokens):
            metric.update(nll / tokens, weight=tokens)  # weighted mean = sum NLL / tokens over the epoch and ranks
        self.log(name, metric, prog_bar=True, on_step=False, on_epoch=True)
        return nll / tokens.clamp(min=1)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, self.val_loss, "val/loss")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, self.test_loss, "test/loss")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per-trace negative log-likelihood of the completion under the model (``w2sr predict``): how surprising
        each teacher trace is to the student, e.g. to compare W2SR-P and W2SR-N traces."""
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                            position_ids=batch.get("position_ids"), use_cache=False).logits
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels,
                                                   ignore_index=-100, reduction="none")
        counts = (labels != -100).sum(dim=1)
        totals = losses.sum(dim=1)
        return [{"key": key, "nll": float(total / max(1, int(count))), "tokens": int(count)}
                for key, total, count in zip(batch["keys"], totals, counts)]

    def configure_optimizers(self) -> Any:
        from transformers import get_scheduler

        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("no trainable parameters")
        optimizer = self.optimizer_factory(params)
        # the configured settings, re-applied over a restored optimizer state on resume (on_train_start)
        self._configured_groups = [{k: v for k, v in group.items() if k != "params"}
                                   for group in optimizer.param_groups]
        sched = self.hparams.scheduler
        sched = sched if isinstance(sched, SchedulerOptions) else SchedulerOptions(**dict(sched))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_scheduler(sched.name, optimizer, num_warmup_steps=int(sched.warmup_ratio * total),
                                  num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------ checkpoint / export
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights: a LoRA checkpoint is megabytes, not the whole base model.

        Sharded checkpoints (FSDP ``state_dict_type: sharded``) keep every weight: each rank writes only its share,
        and Lightning's sharded resume loads the module's whole state dict. DeepSpeed saves weights itself.
        """
        if self.hparams.finetune != "lora" or "state_dict" not in checkpoint:
            return
        if getattr(self.trainer.strategy, "_state_dict_type", None) == "sharded":
            return
        from w2sr.training.export import clean_name

        trainable = {clean_name(name) for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if clean_name(k) in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Loading is not strict (the base is not in the checkpoint), so check every trainable weight is there.

        Sharded (FSDP) and DeepSpeed checkpoints load the weights in the strategy; the dict seen here has none.
        """
        if self.model is None or "state_dict" not in checkpoint:
            return
        from w2sr.training.export import clean_name

        trainable = {clean_name(name) for name, p in self.named_parameters() if p.requires_grad}
        missing = sorted(trainable - {clean_name(k) for k in checkpoint["state_dict"]})
        if missing:
            raise InputError(f"the checkpoint does not hold {len(missing)} trainable weights of this model "
                             f"(first: {missing[0]}); was it made with other finetune/lora settings?",
                             field="ckpt_path")

    def export_path(self) -> Path:
        root = self.trainer.default_root_dir if self._trainer is not None else "."
        return Path(self.hparams.export_dir or os.path.join(root, "export"))

    def check_export(self) -> None:
        """Refuse to start a run whose export would replace an earlier one (unless ``overwrite_export``)."""
        path = self.export_path()
        if path.exists() and any(path.iterdir()) and not self.hparams.overwrite_export:
            raise InputError("export folder exists and is not empty; set model.overwrite_export true or "
                             "choose another model.export_dir", path=path, field="model.export_dir")

    def setup(self, stage: str) -> None:
        """Before ``configure_model``: refuse a run whose export exists; give FSDP its per-layer wrap policy."""
        from w2sr.training.strategies import prepare_strategy

        if stage == "fit":
            self.check_export()
        prepare_strategy(self.trainer.strategy, hf_checkpointing=self.hparams.gradient_checkpointing)

    def _student_card(self) -> dict[str, Any]:
        lora = self.hparams.lora
        if self.hparams.finetune != "lora":
            lora = None
        elif not isinstance(lora, dict):
            lora = asdict(lora)
        return {"base_model": self.hparams.model_name_or_path, "finetune": self.hparams.finetune,
                "quantization": self.hparams.quantization, "lora": lora, "global_step": self.trainer.global_step}

    def on_train_end(self) -> None:
        """Save the adapter (peft format) or the full model, with the tokenizer, for ``evaluate`` and users.

        Written atomically by :func:`w2sr.training.export.export_student` (a staging folder renamed into place), on every
        strategy: DDP saves on rank 0, FSDP consolidates the ranks' shards, DeepSpeed ZeRO-3 gathers per module.
        """
        from w2sr.training.export import export_student

        path = self.export_path()
        if self.trainer.is_global_zero and path.exists():
            self.check_export()  # still allowed: the run was started with overwrite_export
        export_student(self, path, self._student_card(), overwrite=True)
        self.exported_to = str(path)
