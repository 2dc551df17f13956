"""Quiet, honest output: drop the third-party notices that are noise for w2sr users, keep every real warning.

Each filter matches one exact message prefix from one library (Lightning's litlogger / litmodels advertisements,
its tensorboardX notice, bitsandbytes' CPU 4-bit kernel notice); nothing is silenced by category or by logger as a
whole. ``w2sr.cli.main`` installs them. Exercised by ``pytest tests/runtime/test_faults.py -k quiet``.
"""

from __future__ import annotations

import logging
import re
import warnings

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


# Options shown by ``w2sr <command> --help`` for the commands that never run a training loop (all other options
# are still accepted, so shared config files and flags such as ``--trainer.logger false`` keep working).
HELP_HIDDEN: dict[str, tuple[str, ...]] = {
    "verify": ("trainer", "model", "data", "seed_everything", "optimizer", "lr_scheduler"),
    "decontaminate": ("trainer", "model", "data", "seed_everything", "optimizer", "lr_scheduler"),
    "generate": ("trainer", "data", "optimizer", "lr_scheduler"),
    "evaluate": ("trainer", "data", "optimizer", "lr_scheduler"),
}
HELP_KEPT = {"trainer.accelerator", "trainer.devices"}  # generate/evaluate place the model with these


def hide_unused_options(parser: object, subcommand: str) -> None:
    """Hide (not remove) the option groups a subcommand does not use from its ``--help``."""
    import argparse

    hidden = HELP_HIDDEN.get(subcommand)
    if not hidden:
        return
    pattern = re.compile(r"^(%s)(\.|$)" % "|".join(map(re.escape, hidden)))
    kept = set() if subcommand in ("verify", "decontaminate") else HELP_KEPT
    for action in getattr(parser, "_actions", []):
        if pattern.match(action.dest or "") and action.dest not in kept:
            action.help = argparse.SUPPRESS
    for group in getattr(parser, "_action_groups", []):
        actions = getattr(group, "_group_actions", [])
        if actions and all(action.help == argparse.SUPPRESS for action in actions):
            group.description = None
            group.title = None
    note = (
        "Training options (trainer.*, model.*, data.*) are accepted but not used by this command, so they are "
        "not listed."
        if subcommand in ("verify", "decontaminate")
        else "Training-only options (data.*, most trainer.*) are "
        "accepted but not used by this command, so they are not listed."
    )
    parser.epilog = note  # type: ignore[attr-defined]
