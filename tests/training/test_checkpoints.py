"""w2sr.training.checkpoints: every fit keeps last.ckpt, and ``--ckpt_path last`` resumes from it or exits 2 saying
where it looked (issue 28.1). The end-to-end resume through ``w2sr fit`` is in tests/cli/test_cli.py."""

from __future__ import annotations

import os

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from w2sr.records.jsonl import InputError
from w2sr.training.checkpoints import keep_last_checkpoint, resolve_ckpt_path


def _trainer(root, **kwargs) -> L.Trainer:
    kwargs.setdefault("logger", False)
    return L.Trainer(default_root_dir=str(root), accelerator="cpu", enable_progress_bar=False, **kwargs)


def test_the_default_checkpoint_keeps_last_ckpt_in_the_run_folder(tmp_path):
    trainer = _trainer(tmp_path / "run")
    keep_last_checkpoint(trainer, [])
    [callback] = trainer.checkpoint_callbacks
    assert callback.save_last is True and callback.save_top_k == 0
    assert callback.dirpath == os.path.realpath(tmp_path / "run" / "checkpoints")


def test_a_configured_checkpoint_gets_save_last(tmp_path):
    mine = ModelCheckpoint(dirpath=str(tmp_path / "ck"), every_n_train_steps=50, save_last=False)
    trainer = _trainer(tmp_path / "run", callbacks=[mine])
    keep_last_checkpoint(trainer, [mine])
    assert trainer.checkpoint_callbacks == [mine] and mine.save_last is True and mine.dirpath.endswith("ck")


def test_last_is_the_newest_last_ckpt_or_a_clear_refusal(tmp_path):
    trainer = _trainer(tmp_path / "run")
    keep_last_checkpoint(trainer, [])
    folder = tmp_path / "run" / "checkpoints"
    with pytest.raises(InputError, match=rf"no last checkpoint to resume from \(looked in {folder}: no such folder"):
        resolve_ckpt_path(trainer, "last")
    folder.mkdir(parents=True)
    (folder / "epoch=0-step=3.ckpt").write_bytes(b"x")
    with pytest.raises(InputError, match=r"no last.ckpt, only epoch=0-step=3.ckpt"):
        resolve_ckpt_path(trainer, "last")
    for age, name in ((20, "last.ckpt"), (10, "last-v1.ckpt")):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (1e9 - age, 1e9 - age))
    assert resolve_ckpt_path(trainer, "last") == str(folder / "last-v1.ckpt")
    assert resolve_ckpt_path(trainer, "some/file.ckpt") == "some/file.ckpt" and resolve_ckpt_path(trainer, None) is None

    off = _trainer(tmp_path / "off", enable_checkpointing=False)
    keep_last_checkpoint(off, [])
    with pytest.raises(InputError, match="checkpointing is off"):
        resolve_ckpt_path(off, "last")


def test_last_is_found_in_an_earlier_logger_version(tmp_path):
    """A ModelCheckpoint without dirpath writes into the logger's version folder: a resumed run has a new version, so
    the earlier versions are searched too."""
    mine = ModelCheckpoint()
    trainer = _trainer(tmp_path, logger=CSVLogger(str(tmp_path), name="logs"), callbacks=[mine])
    keep_last_checkpoint(trainer, [mine])
    earlier = tmp_path / "logs" / "version_0" / "checkpoints"
    earlier.mkdir(parents=True)
    (earlier / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path(trainer, "last") == str(earlier / "last.ckpt")
