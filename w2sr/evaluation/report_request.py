"""The options of ``w2sr report`` (and of its alias ``python -m w2sr.report``), declared once.

LightningCLI reads them through ``w2sr.runtime.command_line.stage_method``, ``python -m w2sr.report`` through
``w2sr.runtime.command_line.parse_request``: the same options, help, defaults and list syntax. The report itself is
made by :func:`w2sr.evaluation.report.write_report`. Exercised by ``w2sr report --help``,
``python -m w2sr.report --help`` and ``pytest tests/evaluation/test_report.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from w2sr.evaluation.rgr import MIN_GAP
from w2sr.records.options import as_list, document_fields


@document_fields
@dataclass(kw_only=True)
class ReportRequest:
    """Which evaluation runs to compare and how; ``runs`` and ``fit_runs`` are lists after construction, whichever
    form (``[a,b]``, ``a,b``, space-separated on the command line) they were given in."""

    runs: list[str] | str
    """results.json files of ``w2sr evaluate`` (or their folders), optionally ``name=path``; a seed group as
    ``name=[s0/results.json,s1/results.json,...]`` (one per seed, paired by position with the other groups)."""
    output_dir: str
    """where report.md / report.json / report.png are written."""
    base: str | None = None
    """the base model's run (a run name or a path)."""
    reference: str | None = None
    """the reference run (RL-trained or oracle student) for RGR = (acc - base) / (ref - base)."""
    fit_runs: list[str] | str | None = None
    """fit run folders (optionally ``name=path``), logged by Lightning's CSV, TensorBoard, MLflow (file store) or
    offline W&B logger: plot val/reasoning_acc, train/loss and val/loss (an empty curve says why); their
    ``cost.json`` makes the W2SR arm (an SFT fit) and the RL arm (an RL fit) of the cost comparison."""
    teacher: str | None = None
    """a ``w2sr verify --summary`` JSON: report the teacher traces' accuracy too, and add their cost (generation +
    verification) to the W2SR arm."""
    cards: list[str] | str | None = None
    """generation cards (``<traces>.card.json``) whose cost the W2SR arm adds, beyond those the summary carries."""
    metric: str = "avg@n"
    """``avg@n`` (pass@1 estimated from n samples), ``pass@K`` or ``maj@K``."""
    min_gap: float = MIN_GAP
    """RGR is undefined when the reference gains at most this much (fraction) over the base (also when the paired
    interval of the reference's gain contains zero)."""
    allow_mismatch: bool = False
    """compare runs evaluated with another grader, prompt, quantization, sampling or problem set (refused, exit 2,
    by default); the report then flags the differences loudly."""
    overwrite: bool = False
    """replace an existing report."""

    def __post_init__(self) -> None:
        self.runs = as_list(self.runs)
        self.fit_runs = as_list(self.fit_runs)
        self.cards = as_list(self.cards)
        self.output_dir = str(self.output_dir)
