"""Exports of the student: plain folders Hugging Face transformers and vLLM load, written atomically.

* :func:`export_student` — called by ``StudentModule.on_train_end``: the adapter (peft format, LoRA/QLoRA) or the
  full model, with the tokenizer and the student card ``w2sr_student.json``. Under DDP rank 0 calls
  ``save_pretrained``; under FSDP every rank saves only its own shards (``torch.distributed.checkpoint``) and rank 0
  then consolidates them tensor by tensor into safetensors shards (no GPU ever holds more than its share, rank 0's
  host memory holds one output shard); under DeepSpeed ZeRO-3 the parameters are gathered one module at a time.
* :func:`merge_adapter` — ``w2sr export --adapter DIR --output DIR``: merge a LoRA/QLoRA adapter into its base
  loaded in the dtype the student was trained in (the student card's ``dtype``, else the base's config; never into a
  4-bit base; ``--dtype`` overrides) and write a plain model folder; ``--base_quantization nf4`` loads the
  base in NF4 (as QLoRA trained against it) and dequantizes it first, so the merged weights are the ones the
  adapter was trained with (CUDA + bitsandbytes).
* :func:`export_checkpoint` — ``w2sr export --checkpoint DIR --output DIR``: consolidate a sharded (FSDP) checkpoint
  directory, e.g. ``checkpoints/last.ckpt/``, into a model folder (or an adapter for LoRA runs), offline on a CPU.

Every export's ``generation_config.json`` lists the end-of-turn token among its EOS ids (``export_stops.py``), so the
student stops in engines that know nothing of w2sr's stop list. Every folder is written to a hidden staging folder
beside the target and renamed into place, so an interrupted
export never leaves a mix of old and new files; an existing folder is only replaced with ``overwrite``.
The file plumbing (staging, the shard writer, sharded checkpoints) is in ``shards.py``.
Exercised by ``pytest tests/training/test_export.py tests/training/test_sharded.py
tests/training/test_quantization_eval.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from w2sr.records.jsonl import InputError, OutputExistsError, make_staging_dir
from w2sr.records.options import as_dict, document_fields
from w2sr.training.export_dtype import EXPORT_DTYPES, trained_dtype
from w2sr.training.export_stops import base_generation_config, write_generation_config
from w2sr.training.loading import QUANTIZATIONS, card_quantization, load_dequantized_nf4, load_tokenizer
from w2sr.training.shards import (
    CARD,
    SafetensorsShardWriter,
    adapter_key,
    apply_umask_tree,
    clean_name,
    consolidate,
    hf_key,
    is_nonempty_dir,
    read_sharded_metadata,
    staged_folder,
    write_card,
)

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.strategies import Strategy
    from transformers import PretrainedConfig


@document_fields
@dataclass(kw_only=True)
class ExportRequest:
    """The options of ``w2sr export``, declared once: LightningCLI reads them from here
    (``w2sr.runtime.command_line.stage_method``)."""

    output: str
    """the folder to write (a new folder; an existing one only with ``--overwrite``)."""
    adapter: str | None = None
    """a peft adapter folder (``fit``'s export of a LoRA/QLoRA run) to merge into its base."""
    checkpoint: str | None = None
    """a sharded checkpoint folder of an FSDP run (e.g. ``checkpoints/last.ckpt``) to consolidate."""
    base: str | None = None
    """the base model (default: the adapter's ``base_model_name_or_path`` / the checkpoint's model)."""
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    """weight dtype of the written model (default: as trained: for a merge the student card's ``dtype``, else the
    base's config.json; for a checkpoint the weights as stored)."""
    base_quantization: Literal["none", "nf4"] = "none"
    """``none`` merges into the base as stored (in ``dtype``); ``nf4`` loads the base in NF4, dequantizes it to
    ``dtype`` and merges into that: the weights a QLoRA adapter was trained against (CUDA + bitsandbytes)."""
    overwrite: bool = False
    """replace an existing output folder."""


def _tied_names(config: PretrainedConfig) -> set[str]:
    return {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()


def export_checkpoint(
    checkpoint: str, output: str, base: str | None = None, dtype: str | None = None, overwrite: bool = False
) -> Path:
    """``w2sr export --checkpoint DIR``: a sharded Lightning checkpoint folder -> a model (or adapter) folder.

    The run's settings come from the checkpoint's ``meta.pt`` (hyper-parameters); ``base`` overrides the base model
    whose config and tokenizer are copied.
    """
    from transformers import AutoConfig

    path = Path(checkpoint)
    meta_file = path / "meta.pt"
    read_sharded_metadata(path)
    hparams: dict[str, Any] = {}
    if meta_file.is_file():
        hparams = dict(torch.load(meta_file, map_location="cpu", weights_only=False).get("hyper_parameters") or {})
    base = base or hparams.get("model_name_or_path")
    if not base:
        raise InputError("no base model known for this checkpoint; pass --base MODEL", path=path, field="--base")
    if Path(output).resolve() == path.resolve():
        raise InputError("the output must not be the checkpoint folder", path=output, field="--output")
    torch_dtype = EXPORT_DTYPES[dtype] if dtype else None
    config = AutoConfig.from_pretrained(base, trust_remote_code=bool(hparams.get("trust_remote_code")))
    tokenizer = load_tokenizer(hparams.get("tokenizer_name_or_path") or base)
    with staged_folder(output, overwrite) as staging:
        lora = as_dict(hparams.get("lora")) if hparams.get("finetune") == "lora" else None
        if lora is not None:
            from peft import LoraConfig

            consolidate(path, staging, adapter_key, torch_dtype, prefix="adapter_model")
            LoraConfig(
                r=lora.get("r", 16),
                lora_alpha=lora.get("alpha", 32),
                lora_dropout=lora.get("dropout", 0.05),
                target_modules=lora.get("target_modules", "all-linear"),
                task_type="CAUSAL_LM",
                base_model_name_or_path=base,
            ).save_pretrained(staging)
        else:
            consolidate(path, staging, hf_key, torch_dtype, skip=_tied_names(config))
            if torch_dtype is not None:
                config.dtype = torch_dtype
            config.save_pretrained(staging)
        write_generation_config(staging, base_generation_config(base), config, tokenizer)
        tokenizer.save_pretrained(staging)
        write_card(
            staging,
            {
                "base_model": base,
                "finetune": hparams.get("finetune", "full"),
                "quantization": hparams.get("quantization", "none"),
                "lora": lora,
                "consolidated_from": str(path),
            },
        )
    return Path(output)


# ------------------------------------------------------------------------------------------- adapter merge
def merge_adapter(
    adapter: str,
    output: str,
    base: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    base_quantization: str = "none",
    device: str | int | None = None,
) -> Path:
    """Merge a LoRA/QLoRA adapter into its base loaded in ``dtype`` (never 4-bit) and write a plain model folder
    (safetensors, config, tokenizer, student card) that transformers and vLLM load.

    ``dtype`` None: the dtype the student was trained in (:func:`trained_dtype`), so the merged model answers as the
    base + adapter that was evaluated; the card records the dtype (``dtype``) and where it came from (``dtype_from``).

    ``base_quantization="nf4"``: the base is loaded in NF4 and dequantized to ``dtype`` before merging (the weights
    a QLoRA adapter was trained against); needs CUDA and bitsandbytes (``device``: where to quantize, default the
    current CUDA device; the tests use bitsandbytes' CPU backend). The card records it in ``merged_from``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = Path(adapter)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise InputError("not a peft adapter folder (no adapter_config.json)", path=adapter_dir, field="--adapter")
    if Path(output).resolve() == adapter_dir.resolve():
        raise InputError("the output must be a new folder, not the adapter folder", path=output, field="--output")
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {sorted(EXPORT_DTYPES)}", field="--dtype")
    if base_quantization not in QUANTIZATIONS:
        raise InputError(
            f"unknown base quantization {base_quantization!r}; choose one of {list(QUANTIZATIONS)}",
            field="--base_quantization",
        )
    if base_quantization == "nf4" and device is None and not torch.cuda.is_available():
        raise InputError(
            "--base_quantization nf4 needs a CUDA GPU and bitsandbytes (the base is quantized to NF4, "
            "then dequantized); no GPU is visible here: use --base_quantization none for a bf16 base",
            field="--base_quantization",
        )
    if is_nonempty_dir(Path(output)) and not overwrite:  # before loading any weights
        raise OutputExistsError(
            "output folder exists and is not empty; pass --overwrite to replace it", path=output, field="--output"
        )
    adapter_config = json.loads(config_file.read_text())
    base = base or adapter_config.get("base_model_name_or_path")
    if not base:
        raise InputError(
            "the adapter does not name its base model; pass --base MODEL",
            path=config_file,
            field="base_model_name_or_path",
        )
    dtype, dtype_from = (dtype, "--dtype") if dtype else trained_dtype(adapter_dir, base, trust_remote_code)
    print(f"w2sr export: merging in {dtype} (from {dtype_from}; --dtype chooses another)", file=sys.stderr)
    trained_with = card_quantization(str(adapter_dir))
    if trained_with == "nf4" and base_quantization != "nf4":
        print(
            f"w2sr export: {adapter_dir} was trained on an NF4 base (its {CARD}); merging into the {dtype} base, "
            "whose weights differ from those the adapter saw: --base_quantization nf4 merges into the dequantized "
            "NF4 base instead",
            file=sys.stderr,
        )
    if base_quantization == "nf4":
        model = load_dequantized_nf4(base, EXPORT_DTYPES[dtype], trust_remote_code, device=device)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=EXPORT_DTYPES[dtype], trust_remote_code=trust_remote_code
        )
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    has_tokenizer = any((adapter_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(str(adapter_dir) if has_tokenizer else base, trust_remote_code)
    card: dict[str, Any] = {}
    if (adapter_dir / CARD).is_file():
        card = json.loads((adapter_dir / CARD).read_text())
    card.update(
        dtype=dtype,
        dtype_from=dtype_from,
        merged_from={"adapter": str(adapter_dir), "base": base, "dtype": dtype, "base_quantization": base_quantization},
    )
    with staged_folder(output, overwrite) as staging:
        merged.save_pretrained(staging)
        write_generation_config(staging, getattr(merged, "generation_config", None), merged.config, tokenizer)
        tokenizer.save_pretrained(staging)
        write_card(staging, card)
    return Path(output)


# ------------------------------------------------------------------------------------ export at end of fit
def sharding_of(strategy: Strategy) -> str:
    """``fsdp`` (parameters sharded by FSDP), ``zero3`` (DeepSpeed stage 3) or ``none`` (every rank holds them)."""
    name = type(strategy).__name__
    if "FSDP" in name:
        return "none" if str(getattr(strategy, "sharding_strategy", "")).endswith("NO_SHARD") else "fsdp"
    if "DeepSpeed" in name:
        stage = (getattr(strategy, "config", None) or {}).get("zero_optimization", {}).get("stage", 0)
        return "zero3" if stage == 3 else "none"
    return "none"


def export_student(module: LightningModule, path: Path, card: dict[str, Any], overwrite: bool) -> None:
    """Save the trained adapter or model of ``module`` (a ``StudentModule``) to ``path`` on every strategy.

    Collective: every rank must call it (FSDP and ZeRO-3 gather or save shards together).
    """
    trainer = module.trainer
    strategy = trainer.strategy
    sharding = sharding_of(strategy)
    lora = module.hparams.finetune == "lora"
    what = "adapter" if lora else "model"
    if sharding == "none":
        if trainer.is_global_zero:
            with staged_folder(path, overwrite, field="model.export_dir") as staging:
                module.model.save_pretrained(staging)
                _finish(module, staging, card)
            _report(trainer, what, path)
        strategy.barrier("w2sr-export")
        return
    staging_name = None
    if trainer.is_global_zero:
        if is_nonempty_dir(path) and not overwrite:
            raise OutputExistsError(
                "export folder exists; set model.overwrite_export", path=path, field="model.export_dir"
            )
        staging_name = str(make_staging_dir(path))
    staging = Path(strategy.broadcast(staging_name))
    try:
        if sharding == "fsdp":
            _export_fsdp(module, staging, lora)
        else:
            _export_zero3(module, staging, lora)
        if trainer.is_global_zero:
            _finish(module, staging, card, lora_config=lora and sharding == "fsdp")
            apply_umask_tree(staging)
            if path.exists():
                shutil.rmtree(path)
            os.replace(staging, path)
            _report(trainer, what, path)
        strategy.barrier("w2sr-export")
    finally:
        if trainer.is_global_zero and staging.exists():
            shutil.rmtree(staging)


def _report(trainer: Trainer, what: str, path: Path) -> None:
    """Said by the rank that wrote the export (not filtered to rank 0, so a test can count the writers)."""
    print(f"w2sr: saved the {what} to {path} (rank {trainer.global_rank} of {trainer.world_size})", file=sys.stderr)


def _finish(module: LightningModule, staging: Path, card: dict[str, Any], lora_config: bool = False) -> None:
    """Config (unless the export wrote it), generation config (every export, adapters too: its EOS ids end the
    turn, ``export_stops.py``), tokenizer and student card."""
    model = module.model
    if lora_config:
        model.peft_config["default"].save_pretrained(staging)
    elif not (staging / "config.json").exists() and not (staging / "adapter_config.json").exists():
        model.config.save_pretrained(staging)
    write_generation_config(staging, getattr(model, "generation_config", None), model.config, module.tokenizer)
    module.tokenizer.save_pretrained(staging)
    write_card(staging, card)


def _export_fsdp(module: LightningModule, staging: Path, lora: bool) -> None:
    """Each rank writes its own shards (no gathering on the GPU), then rank 0 consolidates them tensor by tensor."""
    # private Fabric helpers: the sharded state-dict context and the DCP save Lightning's own FSDP checkpoints use,
    # so an export is laid out exactly like last.ckpt (tests/layout/test_lightning_private.py fails if a release
    # renames them)
    from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save, _get_sharded_state_dict_context

    strategy = module.trainer.strategy
    with _get_sharded_state_dict_context(strategy.model):
        state = strategy.model.state_dict()
    if lora:
        trainable = {clean_name(n) for n, p in module.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in trainable}
    shards = staging / "_sharded"
    _distributed_checkpoint_save({"model": state}, shards)
    strategy.barrier("w2sr-export-shards")
    if module.trainer.is_global_zero:
        if lora:
            consolidate(shards, staging, adapter_key, prefix="adapter_model")
        else:
            consolidate(shards, staging, hf_key, skip=_tied_names(module.model.config))
        shutil.rmtree(shards)


def _export_zero3(module: LightningModule, staging: Path, lora: bool) -> None:
    """Gather ZeRO-3 partitioned parameters one module at a time; rank 0 streams them into safetensors shards."""
    import deepspeed

    model = module.model
    is_zero = module.trainer.is_global_zero
    writer = SafetensorsShardWriter(staging, prefix="adapter_model" if lora else "model")
    skip = set() if lora else _tied_names(model.config)
    for module_name, sub in model.named_modules():
        params = [(n, p) for n, p in sub.named_parameters(recurse=False) if not lora or p.requires_grad]
        if not params:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            if is_zero:
                for name, param in params:
                    full = f"{module_name}.{name}" if module_name else name
                    key = full.replace(".default.", ".") if lora else full
                    if key not in skip:
                        writer.add(key, param.data.to("cpu", copy=True))
    if is_zero:
        writer.close()
        if lora:
            model.peft_config["default"].save_pretrained(staging)
        else:
            model.config.save_pretrained(staging)


def run_export(request: ExportRequest) -> Path:
    """``w2sr export``: exactly one of ``adapter`` (merge) or ``checkpoint`` (consolidate); the folder written."""
    adapter, checkpoint, base_quantization = request.adapter, request.checkpoint, request.base_quantization
    if (adapter is None) == (checkpoint is None):
        raise InputError("give exactly one of --adapter DIR or --checkpoint DIR", field="--adapter")
    if adapter is not None:
        return merge_adapter(
            adapter,
            request.output,
            base=request.base,
            dtype=request.dtype,
            overwrite=request.overwrite,
            base_quantization=base_quantization,
        )
    if base_quantization != "none":
        raise InputError("--base_quantization is for merging an adapter (--adapter DIR)", field="--base_quantization")
    return export_checkpoint(
        checkpoint, request.output, base=request.base, dtype=request.dtype, overwrite=request.overwrite
    )
