"""Shards: the file plumbing of exports: staging folders renamed into place, the student card, wrapper-free parameter
names, a streaming safetensors shard writer (the layout of ``save_pretrained``), and reading the sharded
``torch.distributed.checkpoint`` folders FSDP runs save, tensor group by tensor group, into such shards.

Exercised by ``pytest tests/training/test_export.py tests/training/test_sharded.py`` and ``w2sr export --checkpoint``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from w2sr.records.jsonl import InputError, OutputExistsError, apply_umask, make_staging_dir

CARD = "w2sr_student.json"
MAX_SHARD_BYTES = 4 * 1024**3
# wrapper prefixes FSDP / activation checkpointing / torch.compile put into parameter names
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "_forward_module.")


def is_nonempty_dir(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@contextmanager
def staged_folder(path: str | os.PathLike, overwrite: bool, field: str = "--output") -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on success it replaces ``path`` (which must not hold files
    unless ``overwrite``); on error it is removed and ``path`` is left as it was."""
    path = Path(path)
    if is_nonempty_dir(path) and not overwrite:
        raise OutputExistsError(
            "output folder exists and is not empty; pass --overwrite to replace it", path=path, field=field
        )
    staging = make_staging_dir(path)  # umask permissions; removes the staging folders of killed runs
    try:
        yield staging
        apply_umask_tree(staging)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def apply_umask_tree(folder: Path) -> None:
    """Give every file and folder under ``folder`` the permissions the user's umask gives new ones: safetensors
    writes its files 0600 (through a private temporary file), while the config, tokenizer and card beside them follow
    the umask (0644 under the usual 022)."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            apply_umask(os.path.join(root, name))


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
        raise InputError(
            "a DeepSpeed checkpoint folder: fit exports ZeRO-3 runs itself; to consolidate this one, "
            "use lightning.pytorch.utilities.deepspeed.convert_zero_checkpoint_to_fp32_state_dict",
            path=path,
            field="--checkpoint",
        )
    if not (path / ".metadata").is_file():
        raise InputError(
            "not a sharded checkpoint folder (no .metadata file written by torch.distributed."
            "checkpoint, as Lightning's FSDP strategy saves with state_dict_type: sharded)",
            path=path,
            field="--checkpoint",
        )
    metadata = FileSystemReader(str(path)).read_metadata()
    return {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def iter_sharded_tensors(
    checkpoint: str | os.PathLike, keys: list[str], max_group_bytes: int | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, full tensor)`` read from the shards of every rank, a group of at most ``max_group_bytes`` at a
    time (one ``torch.distributed.checkpoint.load`` per group, no process group needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    meta = read_sharded_metadata(checkpoint)
    max_group_bytes = max_group_bytes or MAX_SHARD_BYTES
    group: dict[str, torch.Tensor] = {}
    group_bytes = 0

    def load(batch: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        dcp.load(
            batch,
            storage_reader=FileSystemReader(str(checkpoint)),
            planner=dcp.DefaultLoadPlanner(allow_partial_load=True),
            no_dist=True,
        )  # rank 0 alone
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
    return key[len(prefix) :] if key.startswith(prefix) else None


def adapter_key(key: str, adapter_name: str = "default") -> str | None:
    """A sharded-checkpoint key -> the peft adapter file name (``base_model.model....lora_A.weight``), or None."""
    name = hf_key(key)
    if name is None or not name.startswith("base_model.") or ".lora_" not in name:
        return None
    return name.replace(f".{adapter_name}.", ".")


def consolidate(
    checkpoint: str | os.PathLike,
    folder: Path,
    key_map: Callable[[str], str | None],
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
    skip: Iterable[str] = (),
    prefix: str = "model",
) -> list[str]:
    """Write the tensors of a sharded checkpoint that ``key_map`` names into safetensors shards in ``folder``."""
    skip = set(skip)
    meta = read_sharded_metadata(checkpoint)
    names = {key: key_map(key) for key in meta}
    keys = [key for key, name in names.items() if name is not None and name not in skip]
    if not keys:
        raise InputError(
            "the checkpoint holds no model weights of the expected kind", path=checkpoint, field="--checkpoint"
        )
    writer = SafetensorsShardWriter(folder, max_shard_bytes, prefix)
    for key, tensor in iter_sharded_tensors(checkpoint, keys, max_shard_bytes):
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        writer.add(names[key], tensor)
    return writer.close()
