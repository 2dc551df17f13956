"""Exports of the student: plain folders Hugging Face transformers and vLLM load, written atomically.

* :func:`export_student` — called by ``StudentModule.on_train_end``: the adapter (peft format, LoRA/QLoRA) or the
  full model, with the tokenizer and the student card ``w2sr_student.json``. Under DDP rank 0 calls
  ``save_pretrained``; under FSDP every rank saves only its own shards (``torch.distributed.checkpoint``) and rank 0
  then consolidates them tensor by tensor into safetensors shards (no GPU ever holds more than its share, rank 0's
  host memory holds one output shard); under DeepSpeed ZeRO-3 the parameters are gathered one module at a time.
* :func:`merge_adapter` — ``w2sr export --adapter DIR --output DIR``: merge a LoRA/QLoRA adapter into its base
  loaded in bf16 (never into a 4-bit base) and write a plain model folder.
* :func:`export_checkpoint` — ``w2sr export --checkpoint DIR --output DIR``: consolidate a sharded (FSDP) checkpoint
  directory, e.g. ``checkpoints/last.ckpt/``, into a model folder (or an adapter for LoRA runs), offline on a CPU.

Every folder is written to a hidden staging folder beside the target and renamed into place, so an interrupted
export never leaves a mix of old and new files; an existing folder is only replaced with ``overwrite``.
Exercised by ``pytest tests/test_export.py tests/test_sharded.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from w2sr.records.jsonl import InputError, OutputExistsError, make_staging_dir

CARD = "w2sr_student.json"
MAX_SHARD_BYTES = 4 * 1024**3
EXPORT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# wrapper prefixes FSDP / activation checkpointing / torch.compile put into parameter names
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "_forward_module.")


# ------------------------------------------------------------------------------------------------ plumbing
def is_nonempty_dir(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@contextmanager
def staged_folder(path: str | os.PathLike, overwrite: bool, field: str = "--output") -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on success it replaces ``path`` (which must not hold files
    unless ``overwrite``); on error it is removed and ``path`` is left as it was."""
    path = Path(path)
    if is_nonempty_dir(path) and not overwrite:
        raise OutputExistsError("output folder exists and is not empty; pass --overwrite to replace it",
                                path=path, field=field)
    staging = make_staging_dir(path)  # umask permissions; removes the staging folders of killed runs
    try:
        yield staging
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_card(folder: Path, card: dict[str, Any]) -> None:
    (folder / CARD).write_text(json.dumps(card, indent=2) + "\n")


def clean_name(name: str) -> str:
    """A parameter name without the wrapper prefixes FSDP and activation checkpointing insert."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


class SafetensorsShardWriter:
    """Write named tensors into ``model-0000i-of-0000N.safetensors`` files of at most ``max_shard_bytes`` each, plus
    ``model.safetensors.index.json`` (the layout of ``save_pretrained``); only the current shard is held in memory."""

    def __init__(self, folder: Path, max_shard_bytes: int | None = None, prefix: str = "model") -> None:
        self.folder, self.prefix = Path(folder), prefix
        self.max_shard_bytes = max_shard_bytes or MAX_SHARD_BYTES
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_shard_bytes:
            self.flush()
        self.pending[name] = tensor.detach().to("cpu").contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        part = self.folder / f".{self.prefix}-part{len(self.files):05d}.safetensors"
        save_file(self.pending, str(part), metadata={"format": "pt"})
        self.files.append((part, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Flush, give the files their final names and write the index; return the file names."""
        self.flush()
        count = len(self.files)
        if count == 1:
            names = [f"{self.prefix}.safetensors"]
        else:
            names = [f"{self.prefix}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        weight_map = {}
        for (part, keys), name in zip(self.files, names):
            os.replace(part, self.folder / name)
            weight_map.update({key: name for key in keys})
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return names


# --------------------------------------------------------------------------------- sharded (DCP) checkpoints
def read_sharded_metadata(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """``{flattened key: TensorStorageMetadata}`` of a ``torch.distributed.checkpoint`` folder."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(checkpoint)
    if (path / "latest").is_file() or (path / "checkpoint").is_dir():
        raise InputError("a DeepSpeed checkpoint folder: fit exports ZeRO-3 runs itself; to consolidate this one, "
                         "use lightning.pytorch.utilities.deepspeed.convert_zero_checkpoint_to_fp32_state_dict",
                         path=path, field="--checkpoint")
    if not (path / ".metadata").is_file():
        raise InputError("not a sharded checkpoint folder (no .metadata file written by torch.distributed."
                         "checkpoint, as Lightning's FSDP strategy saves with state_dict_type: sharded)",
                         path=path, field="--checkpoint")
    metadata = FileSystemReader(str(path)).read_metadata()
    return {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def iter_sharded_tensors(checkpoint: str | os.PathLike, keys: list[str],
                         max_group_bytes: int | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, full tensor)`` read from the shards of every rank, a group of at most ``max_group_bytes`` at a
    time (one ``torch.distributed.checkpoint.load`` per group, no process group needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    meta = read_sharded_metadata(checkpoint)
    max_group_bytes = max_group_bytes or MAX_SHARD_BYTES
    group: dict[str, torch.Tensor] = {}
    group_bytes = 0

    def load(batch: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        dcp.load(batch, storage_reader=FileSystemReader(str(checkpoint)),
                 planner=dcp.DefaultLoadPlanner(allow_partial_load=True), no_dist=True)  # rank 0 alone
        yield from batch.items()

    for key in keys:
        info = meta[key]
        tensor = torch.empty(tuple(info.size), dtype=info.properties.dtype)
        size = tensor.numel() * tensor.element_size()
        if group and group_bytes + size > max_group_bytes:
            yield from load(group)
            group, group_bytes = {}, 0
        group[key] = tensor
        group_bytes += size
    if group:
        yield from load(group)


def hf_key(key: str) -> str | None:
    """A sharded-checkpoint key of a full fine-tune (``model.`` = the checkpoint's module entry, then the
    LightningModule's ``model`` attribute) -> the Hugging Face name; None for other entries (optimizer state)."""
    prefix = "model.model."
    return key[len(prefix):] if key.startswith(prefix) else None


def adapter_key(key: str, adapter_name: str = "default") -> str | None:
    """A sharded-checkpoint key -> the peft adapter file name (``base_model.model....lora_A.weight``), or None."""
    name = hf_key(key)
    if name is None or not name.startswith("base_model.") or ".lora_" not in name:
        return None
    return name.replace(f".{adapter_name}.", ".")


def consolidate(checkpoint: str | os.PathLike, folder: Path, key_map: Callable[[str], str | None],
                dtype: torch.dtype | None = None, max_shard_bytes: int | None = None,
                skip: Iterable[str] = (), prefix: str = "model") -> list[str]:
    """Write the tensors of a sharded checkpoint that ``key_map`` names into safetensors shards in ``folder``."""
    skip = set(skip)
    meta = read_sharded_metadata(checkpoint)
    names = {key: key_map(key) for key in meta}
    keys = [key for key, name in names.items() if name is not None and name not in skip]
    if not keys:
        raise InputError("the checkpoint holds no model weights of the expected kind", path=checkpoint,
                         field="--checkpoint")
    writer = SafetensorsShardWriter(folder, max_shard_bytes, prefix)
    for key, tensor in iter_sharded_tensors(checkpoint, keys, max_shard_bytes):
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        writer.add(names[key], tensor)
    return writer.close()


def _as_dict(value: Any) -> dict[str, Any]:
    """A hyper-parameter group (a dataclass such as ``LoraOptions``, or a mapping) as a plain dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value or {})


def _tied_names(config: Any) -> set[str]:
    return {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()


def export_checkpoint(checkpoint: str, output: str, base: str | None = None, dtype: str | None = None,
                      overwrite: bool = False) -> Path:
    """``w2sr export --checkpoint DIR``: a sharded Lightning checkpoint folder -> a model (or adapter) folder.

    The run's settings come from the checkpoint's ``meta.pt`` (hyper-parameters); ``base`` overrides the base model
    whose config and tokenizer are copied.
    """
    from transformers import AutoConfig

    from w2sr.training.module import load_tokenizer

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
        lora = _as_dict(hparams.get("lora")) if hparams.get("finetune") == "lora" else None
        if lora is not None:
            from peft import LoraConfig

            consolidate(path, staging, adapter_key, torch_dtype, prefix="adapter_model")
            LoraConfig(r=lora.get("r", 16), lora_alpha=lora.get("alpha", 32), lora_dropout=lora.get("dropout", 0.05),
                       target_modules=lora.get("target_modules", "all-linear"), task_type="CAUSAL_LM",
                       base_model_name_or_path=base).save_pretrained(staging)
        else:
            consolidate(path, staging, hf_key, torch_dtype, skip=_tied_names(config))
            if torch_dtype is not None:
                config.dtype = torch_dtype
            config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_card(staging, {"base_model": base, "finetune": hparams.get("finetune", "full"),
                             "quantization": hparams.get("quantization", "none"), "lora": lora,
                             "consolidated_from": str(path)})
    return Path(output)


# ------------------------------------------------------------------------------------------- adapter merge
def merge_adapter(adapter: str, output: str, base: str | None = None, dtype: str = "bfloat16",
                  overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """Merge a LoRA/QLoRA adapter into its base loaded in ``dtype`` (bf16 by default, never 4-bit) and write a plain
    model folder (safetensors, config, tokenizer, student card) that transformers and vLLM load."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from w2sr.training.module import load_tokenizer

    adapter_dir = Path(adapter)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise InputError("not a peft adapter folder (no adapter_config.json)", path=adapter_dir, field="--adapter")
    if Path(output).resolve() == adapter_dir.resolve():
        raise InputError("the output must be a new folder, not the adapter folder", path=output, field="--output")
    if dtype not in EXPORT_DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {sorted(EXPORT_DTYPES)}", field="--dtype")
    if is_nonempty_dir(Path(output)) and not overwrite:  # before loading any weights
        raise OutputExistsError("output folder exists and is not empty; pass --overwrite to replace it",
                                path=output, field="--output")
    adapter_config = json.loads(config_file.read_text())
    base = base or adapter_config.get("base_model_name_or_path")
    if not base:
        raise InputError("the adapter does not name its base model; pass --base MODEL", path=config_file,
                         field="base_model_name_or_path")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=EXPORT_DTYPES[dtype],
                                                 trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    has_tokenizer = any((adapter_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(str(adapter_dir) if has_tokenizer else base, trust_remote_code)
    card: dict[str, Any] = {}
    if (adapter_dir / CARD).is_file():
        card = json.loads((adapter_dir / CARD).read_text())
    card.update(merged_from={"adapter": str(adapter_dir), "base": base, "dtype": dtype})
    with staged_folder(output, overwrite) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_card(staging, card)
    return Path(output)


# ------------------------------------------------------------------------------------ export at end of fit
def sharding_of(strategy: Any) -> str:
    """``fsdp`` (parameters sharded by FSDP), ``zero3`` (DeepSpeed stage 3) or ``none`` (every rank holds them)."""
    name = type(strategy).__name__
    if "FSDP" in name:
        return "none" if str(getattr(strategy, "sharding_strategy", "")).endswith("NO_SHARD") else "fsdp"
    if "DeepSpeed" in name:
        stage = (getattr(strategy, "config", None) or {}).get("zero_optimization", {}).get("stage", 0)
        return "zero3" if stage == 3 else "none"
    return "none"


def export_student(module: Any, path: Path, card: dict[str, Any], overwrite: bool) -> None:
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
            raise OutputExistsError("export folder exists; set model.overwrite_export", path=path,
                                    field="model.export_dir")
        staging_name = str(make_staging_dir(path))
    staging = Path(strategy.broadcast(staging_name))
    try:
        if sharding == "fsdp":
            _export_fsdp(module, staging, lora)
        else:
            _export_zero3(module, staging, lora)
        if trainer.is_global_zero:
            _finish(module, staging, card, lora_config=lora and sharding == "fsdp")
            if path.exists():
                shutil.rmtree(path)
            os.replace(staging, path)
            _report(trainer, what, path)
        strategy.barrier("w2sr-export")
    finally:
        if trainer.is_global_zero and staging.exists():
            shutil.rmtree(staging)


def _report(trainer: Any, what: str, path: Path) -> None:
    """Said by the rank that wrote the export (not filtered to rank 0, so a test can count the writers)."""
    print(f"w2sr: saved the {what} to {path} (rank {trainer.global_rank} of {trainer.world_size})", file=sys.stderr)


def _finish(module: Any, staging: Path, card: dict[str, Any], lora_config: bool = False) -> None:
    model = module.model
    if lora_config:
        model.peft_config["default"].save_pretrained(staging)
    elif not (staging / "config.json").exists() and not (staging / "adapter_config.json").exists():
        model.config.save_pretrained(staging)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(staging)
    module.tokenizer.save_pretrained(staging)
    write_card(staging, card)


def _export_fsdp(module: Any, staging: Path, lora: bool) -> None:
    """Each rank writes its own shards (no gathering on the GPU), then rank 0 consolidates them tensor by tensor."""
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


def _export_zero3(module: Any, staging: Path, lora: bool) -> None:
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
