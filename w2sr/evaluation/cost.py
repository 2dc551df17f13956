"""The cost of each arm (issue 25.3), from the files the stages wrote: W2SR = teacher generation + verification + SFT
fit; RL = the RL fit (rollouts + scoring + training); in device-seconds and FLOPs, and the cost ratio W2SR / RL.

Inputs: fit run folders (their ``cost.json``; ``stage: fit`` makes a W2SR arm, ``stage: rl`` an RL arm), the
``w2sr verify --summary`` JSON of the teacher traces (its own ``cost`` and the ``generation_cost`` of the cards
that made its input) and any further generation cards (``<traces>.card.json``). Every W2SR arm carries the whole
teacher side: the traces cost what they cost whichever fit uses them. A part of an arm without a record is named in
``missing``, never guessed. Pure Python (no torch): ``w2sr report`` calls :func:`arm_costs` and writes
:meth:`ArmCosts.to_report` into report.json (keys ``cost`` and ``cost_ratio``) and :func:`cost_markdown` into
report.md. Exercised by ``pytest tests/evaluation/test_arm_costs.py tests/cli/test_cost_e2e.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from w2sr.records.cost import FLOPS_FORMULA, CostTotal, StageCost, read_cost
from w2sr.records.jsonl import InputError

Arm = Literal["w2sr", "rl"]
ARM_STAGES: dict[str, tuple[str, ...]] = {"w2sr": ("generate", "verify", "fit"), "rl": ("rl",)}
ARM_TITLES = {"w2sr": "W2SR (teacher generation + verification + SFT)", "rl": "RL (rollouts + scoring + training)"}


@dataclass
class ArmCost:
    """One arm's cost: its stages' records added up."""

    arm: Arm
    """``w2sr`` or ``rl``."""
    name: str
    """The arm's key in report.json: ``w2sr`` / ``rl``, or ``w2sr:<fit folder>`` when several fits make arms."""
    fit_run: str
    """The fit run folder whose ``cost.json`` closes the arm."""
    total: CostTotal
    """Device-seconds, FLOPs, CPU and wall seconds, tokens: the sum over ``stages``."""
    stages: list[dict[str, Any]] = field(default_factory=list)
    """Each record added (the stage's ``cost`` object) with ``source``, the file it came from."""
    missing: list[str] = field(default_factory=list)
    """Stages of this arm with no record (e.g. ``generate`` when the traces had no card): the total leaves them out."""

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class CostRatio:
    """W2SR / RL for one pair of arms (below 1: the W2SR arm was cheaper)."""

    w2sr: str
    """The W2SR arm's name."""
    rl: str
    """The RL arm's name."""
    device_seconds: float | None
    """W2SR device-seconds / RL device-seconds (null when RL's is 0)."""
    flops: float | None
    """W2SR FLOPs / RL FLOPs (null when either is unknown or RL's is 0)."""
    cpu_seconds: float | None
    """W2SR CPU seconds / RL CPU seconds."""
    complete: bool
    """Both arms have every stage's record."""


@dataclass
class ArmCosts:
    """Every arm found in the inputs and the ratio of each W2SR arm to each RL arm."""

    arms: dict[str, ArmCost]
    """By arm name."""
    ratios: list[CostRatio]
    """W2SR / RL per pair (empty without an arm of each kind)."""
    without_cost: list[str] = field(default_factory=list)
    """Fit runs given that hold no ``cost.json`` (made before w2sr recorded costs)."""

    def to_report(self) -> dict[str, Any]:
        """``{"cost": {arm name: {...}}, "cost_ratio": [...]}`` for report.json."""
        cost = {}
        for name, arm in self.arms.items():
            cost[name] = {**asdict(arm.total), "arm": arm.arm, "fit_run": arm.fit_run, "complete": arm.complete}
            cost[name].update(missing=arm.missing, records=arm.stages)
        return {"cost": cost, "cost_ratio": [asdict(r) for r in self.ratios]}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _teacher_records(teacher: str | os.PathLike | None, cards: Sequence[str | os.PathLike]) -> list[tuple[str, Any]]:
    """``(source, record)`` of the teacher side: the verify summary's generation cards and cost, then extra cards."""
    found: list[tuple[str, StageCost]] = []
    if teacher is not None:
        path = Path(teacher)
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read the verify summary ({err})", path=path, field="teacher") from None
        if not isinstance(summary, dict):
            raise InputError("expected a JSON object (w2sr verify --summary)", path=path, field="teacher")
        for index, record in enumerate(summary.get("generation_cost") or []):
            found.append((f"{path}#generation_cost[{index}]", StageCost.from_dict(record, path)))
        if summary.get("cost") is not None:
            found.append((str(path), StageCost.from_dict(summary["cost"], path)))
    seen = [record.to_dict() for _, record in found]
    for card in cards:
        record = read_cost(card)
        if record.stage != "generate":
            raise InputError(f"expected a generation card, found a {record.stage!r} cost", path=card, field="cards")
        if record.to_dict() not in seen:  # the summary already carries the card of its input
            found.append((str(card), record))
            seen.append(record.to_dict())
    return found


def arm_costs(
    fit_runs: Sequence[str | os.PathLike],
    teacher: str | os.PathLike | None = None,
    cards: Sequence[str | os.PathLike] = (),
) -> ArmCosts:
    """The arms made by ``fit_runs`` (folders or their ``cost.json``), the teacher side read from ``teacher`` (a
    ``w2sr verify --summary`` JSON) and ``cards`` (generation cards not already in that summary)."""
    fits: list[tuple[str, StageCost]] = []
    without: list[str] = []
    for run in fit_runs:
        record = read_cost(run, required=False)
        if record is None:
            without.append(str(run))
        elif record.stage not in ("fit", "rl"):
            raise InputError(f"expected a fit's cost.json, found a {record.stage!r} cost", path=run, field="fit_runs")
        else:
            fits.append((str(run), record))
    teacher_side = _teacher_records(teacher, cards)
    arms: dict[str, ArmCost] = {}
    for kind in ("w2sr", "rl"):
        mine = [(run, r) for run, r in fits if (r.stage == "rl") == (kind == "rl")]
        for run, record in mine:
            name = kind if len(mine) == 1 else f"{kind}:{Path(run).name or run}"
            parts = [*(teacher_side if kind == "w2sr" else []), (run, record)]
            have = {r.stage for _, r in parts}
            arms[name] = ArmCost(
                arm=kind,
                name=name,
                fit_run=run,
                total=CostTotal.of(r for _, r in parts),
                stages=[{**r.to_dict(), "source": source} for source, r in parts],
                missing=[s for s in ARM_STAGES[kind] if s not in have],
            )
    ratios = [
        CostRatio(
            w2sr=w.name,
            rl=r.name,
            device_seconds=_ratio(w.total.device_seconds, r.total.device_seconds),
            flops=_ratio(w.total.flops, r.total.flops),
            cpu_seconds=_ratio(w.total.cpu_seconds, r.total.cpu_seconds),
            complete=w.complete and r.complete,
        )
        for w in arms.values()
        if w.arm == "w2sr"
        for r in arms.values()
        if r.arm == "rl"
    ]
    return ArmCosts(arms=arms, ratios=ratios, without_cost=without)


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    for size, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def cost_markdown(costs: ArmCosts) -> str:
    """The report.md section: one row per arm, then each W2SR / RL ratio."""
    if not costs.arms:
        return ""
    lines = [
        "## Cost of each arm",
        "",
        f"FLOPs: {FLOPS_FORMULA} (N: the model's parameters); device-seconds: wall seconds x devices held.",
        "",
        "| arm | stages | device-seconds | FLOPs | CPU seconds | tokens generated | tokens trained |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, arm in costs.arms.items():
        stages = " + ".join(arm.total.stages) + (f" (no record: {', '.join(arm.missing)})" if arm.missing else "")
        t = arm.total
        lines.append(
            f"| {name}: {ARM_TITLES[arm.arm]} | {stages} | {t.device_seconds:.1f} | {_number(t.flops, 'FLOP')} | "
            f"{t.cpu_seconds:.1f} | {t.tokens_generated} | {t.tokens_trained} |"
        )
    for ratio in costs.ratios:
        flag = "" if ratio.complete else " (an arm lacks a stage's record: see above)"
        lines += [
            "",
            f"Cost ratio {ratio.w2sr} / {ratio.rl}: device-seconds {_times(ratio.device_seconds)}, "
            f"FLOPs {_times(ratio.flops)}, CPU seconds {_times(ratio.cpu_seconds)}{flag}.",
        ]
    if costs.without_cost:
        lines += ["", f"Fit runs without a cost.json (not counted): {', '.join(costs.without_cost)}."]
    return "\n".join(lines) + "\n"


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}x"
