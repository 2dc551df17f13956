"""The student: a LightningModule wrapping a Hugging Face causal LM with LoRA, QLoRA (4-bit NF4) or full fine-tuning.

The base model is built lazily in ``configure_model`` (so strategies such as FSDP/DeepSpeed can shard it and the CLI
can instantiate the module cheaply for every subcommand). The optimizer is an ``OptimizerCallable`` that receives
only the trainable parameters. Checkpoints keep only trainable weights (the adapter, for LoRA); at the end of
``fit`` the adapter (peft format) or the full model is exported with its tokenizer. The same module loads a model
(plus an optional adapter) for inference in ``w2sr generate`` / ``w2sr evaluate``.
Exercised by ``w2sr fit --config lightning_configs/quickstart.yaml`` and ``pytest tests/test_model.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from w2sr.jsonl import InputError, make_staging_dir

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
            optimizer: built with the trainable parameters only, e.g. ``torch.optim.AdamW`` with ``lr``.
            scheduler: learning-rate schedule with warmup, stepped per optimizer step.
            export_dir: where ``fit`` saves the adapter / model at the end (default ``<default_root_dir>/export``).
            overwrite_export: replace an existing export; otherwise ``fit`` refuses to start.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.model: Any = None
        self.tokenizer: Any = None
        self.exported_to: str | None = None
        self.strict_loading = False  # checkpoints hold only the trainable weights

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
        kwargs: dict[str, Any] = dict(dtype=resolve_dtype(hp.dtype, full), trust_remote_code=hp.trust_remote_code)
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
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        tokens = (batch["labels"] != -100).sum()
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=stage != "train",
                 batch_size=batch["input_ids"].shape[0], on_step=stage == "train", on_epoch=stage != "train")
        if stage == "train":
            self.log("train/tokens", tokens.float(), reduce_fx="sum", on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per-trace negative log-likelihood of the completion under the model (``w2sr predict``): how surprising
        each teacher trace is to the student, e.g. to compare W2SR-P and W2SR-N traces."""
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
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
        sched = self.hparams.scheduler
        sched = sched if isinstance(sched, SchedulerOptions) else SchedulerOptions(**dict(sched))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_scheduler(sched.name, optimizer, num_warmup_steps=int(sched.warmup_ratio * total),
                                  num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------ checkpoint / export
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights: a LoRA checkpoint is megabytes, not the whole base model."""
        if self.hparams.finetune == "lora":
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Loading is not strict (the base is not in the checkpoint), so check every trainable weight is there."""
        if self.model is None:
            return
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(checkpoint.get("state_dict", {})))
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
        if stage == "fit":
            self.check_export()
            strategy = type(self.trainer.strategy).__name__
            if "FSDP" in strategy or "DeepSpeed" in strategy:
                raise InputError(f"{strategy}: exporting sharded weights is not supported yet; use ddp (the model "
                                 "and its optimizer state must fit on each GPU, e.g. QLoRA)", field="trainer.strategy")

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

        Written to a temporary folder beside the export and renamed into place, so an interrupted save or a run
        with other settings never leaves a mix of old and new files.
        """
        path = self.export_path()
        if self.trainer.is_global_zero:
            staging = make_staging_dir(path)  # umask permissions; removes folders of killed runs
            try:
                self.model.save_pretrained(staging)
                self.tokenizer.save_pretrained(staging)
                (staging / "w2sr_student.json").write_text(json.dumps(self._student_card(), indent=2) + "\n")
                if path.exists():
                    self.check_export()  # still allowed: the run was started with overwrite_export
                    shutil.rmtree(path)
                os.replace(staging, path)
            finally:
                if staging.exists():
                    shutil.rmtree(staging)
            rank_zero_info(f"w2sr: saved the {'adapter' if self.hparams.finetune == 'lora' else 'model'} to {path}")
        self.exported_to = str(path)
