"""Run folders: ``w2sr fit`` without ``trainer.default_root_dir`` runs in a fresh ``runs/fit-<time>`` folder
(config.yaml, logs, checkpoints, export) instead of littering the current folder; a fit that fails before writing
anything leaves no log folder behind (:func:`no_leftovers_of_a_refused_fit`).

Exercised by ``w2sr fit`` without ``--trainer.default_root_dir`` and ``pytest tests/runtime``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console


def default_run_dir(root: str = "runs") -> str:
    """A new ``runs/fit-YYYYmmdd-HHMMSS[-N]`` folder name; ranks started by Lightning's launcher reuse rank 0's."""
    inherited = os.environ.get("W2SR_RUN_DIR")
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return inherited
    base = os.path.join(root, time.strftime("fit-%Y%m%d-%H%M%S"))
    candidate, number = base, 1
    while os.path.exists(candidate):
        candidate, number = f"{base}-{number}", number + 1
    os.environ["W2SR_RUN_DIR"] = candidate
    Console(stderr=True).print(
        f"w2sr fit: no trainer.default_root_dir given; this run's folder is {candidate}",
        highlight=False,
        soft_wrap=True,
    )
    return candidate


@contextmanager
def no_leftovers_of_a_refused_fit(trainer: Any) -> Iterator[None]:
    """Around ``Trainer.fit``: when the fit fails before its first optimizer step (data refused, e.g. ``--data.variant
    correct`` without a correct trace; a bad option found late), remove the log version folders it created
    (Lightning makes ``lightning_logs/version_N`` and the logger's first files before the data is read) and the run
    folders it created that are left empty, so a refused run leaves nothing behind. Earlier versions, and anything
    of a run that trained, are kept."""
    roots = [Path(trainer.default_root_dir)]
    version_parents = []
    for logger in trainer.loggers:
        save_dir = getattr(logger, "save_dir", None)
        if save_dir:
            roots.append(Path(save_dir))
            version_parents.append(Path(save_dir) / str(logger.name))
    roots += version_parents
    existed = {root for root in roots if root.exists()}
    before = {parent: set(os.listdir(parent)) for parent in version_parents if parent.is_dir()}
    try:
        yield
    except BaseException:
        if trainer.is_global_zero and trainer.global_step == 0:
            for parent in version_parents:
                if parent.is_dir():
                    for name in set(os.listdir(parent)) - before.get(parent, set()):
                        shutil.rmtree(parent / name, ignore_errors=True)
            for folder in sorted(set(roots) - existed, key=lambda p: len(p.parts), reverse=True):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise
