"""Checkpoints: the last checkpoint every ``w2sr fit`` keeps, and ``--ckpt_path last`` that resumes from it or
exits 2 saying where it looked.

Lightning's default checkpoint goes into the logger's version folder (``lightning_logs/version_0/checkpoints``) and
keeps no ``last.ckpt``; a second run writes into ``version_1``, so ``--ckpt_path last`` found nothing and Lightning
only warned and trained from step 0 (issue 28). Here:

* :func:`keep_last_checkpoint` (``W2SRTrainer.__init__``): with checkpointing on (the default) and no
  ``ModelCheckpoint`` configured, the run keeps ``<default_root_dir>/checkpoints/last.ckpt``, written at the end of
  every epoch and of the run (``save_top_k: 0``: no second copy of the same weights); a configured
  ``ModelCheckpoint`` gets ``save_last`` on.
* :func:`resolve_ckpt_path` (``W2SRTrainer.fit``): ``last`` becomes the newest ``last.ckpt`` (``last-v1.ckpt`` ...)
  of the run's checkpoint folders (each ``ModelCheckpoint``'s ``dirpath``, else every logger version's
  ``checkpoints`` folder, else ``<default_root_dir>/checkpoints``), or :class:`InputError` naming the folders.

Exercised by ``w2sr fit ... --ckpt_path last`` and ``pytest tests/training/test_checkpoints.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from w2sr.records.jsonl import InputError

LAST = re.compile(
    rf"^{re.escape(ModelCheckpoint.CHECKPOINT_NAME_LAST)}(-v?\d+)?{re.escape(ModelCheckpoint.FILE_EXTENSION)}$"
)


def keep_last_checkpoint(trainer: Any, configured: list[Any]) -> None:
    """After ``Trainer.__init__``: every ``ModelCheckpoint`` saves ``last.ckpt``; Lightning's default one (added when
    ``configured``, the callbacks the trainer was given, holds none) becomes ``<default_root_dir>/checkpoints`` with
    only ``last.ckpt``."""
    given = {id(callback) for callback in configured}
    for index, callback in enumerate(trainer.callbacks):
        if not isinstance(callback, ModelCheckpoint):
            continue
        if id(callback) not in given and type(callback) is ModelCheckpoint and callback.dirpath is None:
            dirpath = Path(trainer.default_root_dir) / "checkpoints"
            trainer.callbacks[index] = ModelCheckpoint(dirpath=str(dirpath), save_top_k=0, save_last=True)
        elif not callback.save_last:
            if callback.save_last is False:
                rank_zero_info(
                    "w2sr: ModelCheckpoint(save_last=False) turned on: w2sr keeps last.ckpt so that "
                    "--ckpt_path last resumes the run"
                )
            callback.save_last = True


def checkpoint_dirs(trainer: Any) -> list[Path]:
    """The folders the run's ``ModelCheckpoint`` callbacks write to, every earlier logger version included."""
    folders: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            folders.append(Path(callback.dirpath))
        elif trainer.loggers:  # Lightning: <save_dir>/<name>/<version>/checkpoints of the first logger
            logger = trainer.loggers[0]
            root = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name)
            folders += sorted(root.glob("*/checkpoints")) or [root / "<version>" / "checkpoints"]
        else:
            folders.append(Path(trainer.default_root_dir) / "checkpoints")
    return list(dict.fromkeys(folders))


def resolve_ckpt_path(trainer: Any, ckpt_path: Any) -> Any:
    """``ckpt_path`` as given, except ``last``: the newest ``last*.ckpt`` of :func:`checkpoint_dirs`, or
    :class:`InputError` (exit 2) saying that none exists and where it looked."""
    if ckpt_path != "last":
        return ckpt_path
    folders = checkpoint_dirs(trainer)
    found = [p for folder in folders if folder.is_dir() for p in folder.iterdir() if LAST.match(p.name)]
    if found:
        newest = max(found, key=lambda p: p.stat().st_mtime)
        if trainer.is_global_zero:  # printed, not logged: a log level set by another library must not hide it
            print(f"w2sr: --ckpt_path last: resuming from {newest}", file=sys.stderr, flush=True)
        return str(newest)
    if not folders:
        raise InputError(
            "no last checkpoint to resume from: checkpointing is off (trainer.enable_checkpointing false, no "
            "ModelCheckpoint), so no run kept one; pass --ckpt_path FILE",
            field="ckpt_path",
        )
    where = "; ".join(_describe(folder) for folder in folders)
    raise InputError(
        f"no last checkpoint to resume from (looked in {where}); a run keeps last.ckpt there unless "
        "trainer.enable_checkpointing is false: start without --ckpt_path, or pass --ckpt_path FILE",
        field="ckpt_path",
    )


def _describe(folder: Path) -> str:
    if not folder.is_dir():
        return f"{folder}: no such folder"
    others = sorted(p.name for p in folder.iterdir() if p.name.endswith(ModelCheckpoint.FILE_EXTENSION))
    return f"{folder}: " + (f"no last.ckpt, only {', '.join(others[:5])}" if others else "empty")
