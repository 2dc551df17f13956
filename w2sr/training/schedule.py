"""The learning-rate schedule's options (``--model.scheduler.*``): the decay after warmup and the warmup share,
checked when the module is built. ``StudentModule.configure_optimizers`` turns them into transformers'
``get_scheduler``. Exercised by ``pytest tests/training/test_option_checks.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from w2sr.records.options import check_choice, check_range, document_fields

ScheduleName = Literal["cosine", "linear", "constant_with_warmup"]


@document_fields
@dataclass
class SchedulerOptions:
    """Learning-rate schedule stepped every optimizer step (transformers' ``get_scheduler``)."""

    name: ScheduleName = "cosine"
    """the decay after warmup: ``cosine``, ``linear`` (both to 0 at the last step) or ``constant_with_warmup``."""
    warmup_ratio: float = 0.1
    """the share of the optimizer steps spent warming up linearly from 0, in [0, 1)."""

    def __post_init__(self) -> None:
        check_choice(self.name, ScheduleName, "model.scheduler.name")
        check_range(self.warmup_ratio, "model.scheduler.warmup_ratio", 0, 1)
