"""Run folders: ``w2sr fit`` without ``trainer.default_root_dir`` runs in a fresh ``runs/fit-<time>`` folder
(config.yaml, logs, checkpoints, export) instead of littering the current folder.

Exercised by ``w2sr fit`` without ``--trainer.default_root_dir`` and ``pytest tests/runtime``.
"""

from __future__ import annotations

import os
import time

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
