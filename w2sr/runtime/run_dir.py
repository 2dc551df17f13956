"""Run folders: ``w2sr fit`` without ``trainer.default_root_dir`` runs in a fresh ``runs/fit-<time>`` folder
(config.yaml, logs, checkpoints, export) instead of littering the current folder; a fit that fails before writing
anything leaves no empty log folder behind (:func:`no_empty_log_dirs`).

Exercised by ``w2sr fit`` without ``--trainer.default_root_dir`` and ``pytest tests/runtime``.
"""

from __future__ import annotations

import os
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
def no_empty_log_dirs(trainer: Any) -> Iterator[None]:
    """Around ``Trainer.fit``: when the fit fails (a refused data set, a bad option found late), remove the log and
    run folders it created and left empty (Lightning makes ``lightning_logs/version_N`` before the data is read), so
    a refused run leaves nothing behind. Folders that existed before, or hold anything, are kept."""
    roots = [Path(trainer.default_root_dir)]
    for logger in trainer.loggers:
        save_dir = getattr(logger, "save_dir", None)
        if save_dir:
            roots += [Path(save_dir), Path(save_dir) / str(logger.name)]
    existed = {root for root in roots if root.exists()}
    try:
        yield
    except BaseException:
        if trainer.is_global_zero:
            made = [Path(d) for logger in trainer.loggers if (d := _made_log_dir(logger))]
            for folder in [*made, *reversed(roots)]:
                if folder not in existed and folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise


def _made_log_dir(logger: Any) -> str | None:
    """A logger's version folder (``log_dir``; reading it makes no folder), or None for loggers without one."""
    try:
        return getattr(logger, "log_dir", None)
    except Exception:  # noqa: BLE001 - a logger whose folder cannot be named without starting it
        return None
