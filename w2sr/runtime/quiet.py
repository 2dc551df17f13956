"""Quiet, honest output: drop the third-party notices that are noise for w2sr users, keep every real warning, and
keep output readable where it goes to a file.

Each filter matches one exact message prefix from one library (Lightning's litlogger / litmodels advertisements,
its tensorboardX notice, bitsandbytes' CPU 4-bit kernel notice, and for commands without a training loop its
accelerator banner); nothing is silenced by category or by logger as a whole. ``--help`` of those commands lists
only the options they use. Without a terminal (Slurm logs) rich output gets the full width. ``w2sr.cli`` installs
all of it. Exercised by ``pytest tests/runtime/test_faults.py -k quiet`` and ``pytest tests/runtime/test_output.py``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# logger name -> message prefixes dropped from it
NOISE_LOG_PREFIXES: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip: For seamless cloud",),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip: For seamless cloud",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}
# regexes matched against the start of ``warnings.warn`` messages
NOISE_WARNINGS: tuple[str, ...] = (r"Starting from v1\.9\.0, `tensorboardX` has been removed as a dependency",)


class DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        return not message.startswith(self.prefixes)


def silence_third_party_noise() -> None:
    """Install the filters (idempotent)."""
    for name, prefixes in NOISE_LOG_PREFIXES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(prefixes))
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


# The commands that never run a Lightning training loop: their --help hides the training options and Lightning's
# "GPU available / TPU available" banner, which describes the Trainer they never run, is not printed.
NO_TRAINING_LOOP = ("generate", "verify", "evaluate", "report", "export", "convert-gguf")
ACCELERATOR_BANNER = ("GPU available:", "TPU available:")  # Lightning's _log_device_info lines (rank_zero_info)
# The model group's settings only ``fit`` uses (generate / evaluate load a model but never train it).
MODEL_TRAINING_OPTIONS = tuple(
    f"model.{name}"
    for name in (
        "finetune",
        "lora",
        "gradient_checkpointing",
        "optimizer",
        "scheduler",
        "export_dir",
        "overwrite_export",
        "loss",
        "loss_chunk_size",
        "compile",
        "liger_kernels",
        "fused_optimizer",
    )
)
_NOT_A_MODEL = ("trainer", "model", "data", "seed_everything", "optimizer", "lr_scheduler")
# Options shown by ``w2sr <command> --help`` for the commands that never run a training loop (all other options
# are still accepted, so shared config files and flags such as ``--trainer.logger false`` keep working).
HELP_HIDDEN: dict[str, tuple[str, ...]] = {
    "verify": _NOT_A_MODEL,
    "decontaminate": _NOT_A_MODEL,
    "report": _NOT_A_MODEL,
    "export": _NOT_A_MODEL,
    "convert-gguf": _NOT_A_MODEL,
    "generate": ("trainer", "data", "optimizer", "lr_scheduler", *MODEL_TRAINING_OPTIONS),
    "evaluate": ("trainer", "data", "optimizer", "lr_scheduler", *MODEL_TRAINING_OPTIONS),
}
HELP_KEPT = {"trainer.accelerator", "trainer.devices"}  # generate/evaluate place the model with these


def hide_unused_options(parser: object, subcommand: str) -> None:
    """Hide (not remove) the option groups a subcommand does not use from its ``--help``."""
    import argparse

    hidden = HELP_HIDDEN.get(subcommand)
    if not hidden:
        return
    pattern = re.compile(r"^(%s)(\.|$)" % "|".join(map(re.escape, hidden)))
    kept = HELP_KEPT if subcommand in ("generate", "evaluate") else set()
    for action in getattr(parser, "_actions", []):
        if pattern.match(action.dest or "") and action.dest not in kept:
            action.help = argparse.SUPPRESS
    for group in getattr(parser, "_action_groups", []):
        actions = getattr(group, "_group_actions", [])
        if actions and all(action.help == argparse.SUPPRESS for action in actions):
            group.description = None
            group.title = None
    note = (
        "Training-only options (data.*, most trainer.*, and the model's training settings: finetune, lora, "
        "optimizer, scheduler, loss, ...) are accepted but not used by this command, so they are not listed."
        if subcommand in ("generate", "evaluate")
        else "Training options (trainer.*, model.*, data.*) are accepted but not used by this command, so they are "
        "not listed."
    )
    parser.epilog = note  # type: ignore[attr-defined]


class DropBanner(DropMessages):
    """Drops Lightning's accelerator banner (:data:`ACCELERATOR_BANNER`) while a command without a training loop
    runs."""

    def __init__(self) -> None:
        super().__init__(ACCELERATOR_BANNER)


def hide_accelerator_banner(subcommand: str | None) -> None:
    """Drop Lightning's "GPU available / TPU available" lines for :data:`NO_TRAINING_LOOP` commands; a later
    ``fit`` in the same process (tests) gets them back."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        for existing in [f for f in logger.filters if isinstance(f, DropBanner)]:
            logger.removeFilter(existing)
        if subcommand in NO_TRAINING_LOOP:
            logger.addFilter(DropBanner())


# Rich lays tables and wraps lines to the terminal's width, and to 80 columns when there is no terminal (a Slurm log,
# `> file`): tables then read "benc…" and long log lines break. Without any terminal, rich gets this many columns;
# tables keep their natural width (they do not expand), lines are not wrapped.
FILE_COLUMNS = 1000


@contextmanager
def full_width_when_not_a_terminal() -> Iterator[None]:
    """While a command runs: ``COLUMNS`` (which rich, and the help formatter, read) set to :data:`FILE_COLUMNS` when
    none of stdin, stdout and stderr is a terminal and the user has not set it; restored afterwards."""
    if os.environ.get("COLUMNS") or any(_is_terminal(s) for s in (sys.stdin, sys.stdout, sys.stderr)):
        yield
        return
    os.environ["COLUMNS"] = str(FILE_COLUMNS)
    try:
        yield
    finally:
        os.environ.pop("COLUMNS", None)


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream is not None and stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
