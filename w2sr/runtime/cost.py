"""The cost of a fit: :class:`CostMeter`, a Lightning callback writing ``<default_root_dir>/cost.json`` at the end of
``fit`` (the SFT fit and the RL fit), plus the record, FLOPs formula and stage clock it uses (re-exported from
:mod:`w2sr.records.cost`, where ``generate`` and ``verify`` reach them).

The meter counts on every rank and combines at the end (one all-gather): ``devices`` = world size, ``device_seconds``
= wall x devices, ``cpu_seconds`` summed over ranks (each rank with its data-loader and grading workers),
``tokens_trained`` = the target tokens of the micro-batches trained (``num_targets``, else labels other than -100),
summed over ranks, ``peak_memory_bytes`` max over ranks, ``parameters`` = N of the loaded model. A module that trains
on something else (the RL policy: rollouts, then scored tokens) reports its own figures through
:func:`cost_meter`: ``meter.add_tokens(generated=..., trained=...)`` and ``with meter.phase("rollout"): ...``.
Resuming from a checkpoint continues the figures (the meter's state is saved with every checkpoint).
``StudentModule.configure_callbacks`` adds one to every fit (:func:`default_meters`), so no config names it; checkpoints
are saved from every rank at once (Lightning's rule), so :meth:`CostMeter.state_dict` gathers the ranks' figures.
Exercised by ``w2sr fit`` and ``pytest tests/runtime/test_cost_meter.py tests/cli/test_cost_e2e.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from w2sr.records.cost import (
    FLOPS_FORMULA,
    CostTotal,
    StageClock,
    StageCost,
    device_kind,
    model_flops,
    parameter_count,
    peak_memory,
    read_cost,
    reset_cuda_peak,
)
from w2sr.records.jsonl import write_json

__all__ = [
    "FLOPS_FORMULA",
    "CostMeter",
    "CostTotal",
    "StageClock",
    "StageCost",
    "cost_meter",
    "default_meters",
    "model_flops",
    "parameter_count",
    "read_cost",
]

COST_FILE = "cost.json"
_SUMMED = ("wall_seconds", "device_seconds", "cpu_seconds", "tokens_generated", "tokens_trained")


def cost_meter(trainer: Trainer) -> CostMeter | None:
    """The trainer's :class:`CostMeter` (the RL module adds its rollout tokens and phases to it), or None."""
    return next((c for c in trainer.callbacks if isinstance(c, CostMeter)), None)


def default_meters(trainer: Trainer, stage: Literal["fit", "rl"] = "fit", count_batches: bool = True) -> list[Callback]:
    """What a module's ``configure_callbacks`` returns so every fit writes ``cost.json``: a new meter, or none when the
    trainer already has one (Lightning would let the module's replace the configured one). The RL module:
    ``default_meters(self.trainer, stage="rl", count_batches=False)``."""
    return [] if cost_meter(trainer) is not None else [CostMeter(stage=stage, count_batches=count_batches)]


def other_rank_pids(trainer: Trainer) -> set[int]:
    """Processes of the other ranks that this one launched (Lightning's subprocess launcher): they count themselves."""
    launcher = getattr(trainer.strategy, "launcher", None)
    return {p.pid for p in getattr(launcher, "procs", None) or []}


class CostMeter(Callback):
    """Measures a fit and writes ``<default_root_dir>/cost.json`` (``{"cost": {...}}``) from rank 0 at its end."""

    def __init__(self, stage: Literal["fit", "rl"] = "fit", count_batches: bool = True) -> None:
        """
        Args:
            stage: ``fit`` (SFT) or ``rl`` (the RL fit), the record's ``stage``.
            count_batches: count the target tokens of each training micro-batch (``num_targets`` or ``labels``);
                off for a module that reports its trained tokens with :meth:`add_tokens`.
        """
        self.stage, self.count_batches = stage, count_batches
        self.clock: StageClock | None = None
        self.record: StageCost | None = None  # the last record written (rank 0) or combined (every rank)
        self._generated = self._trained = 0
        self._trained_on_device: torch.Tensor | None = None  # batches without a host-side count: no sync per batch
        self._parameters = 0
        self._previous: dict[str, Any] = {}
        self._trainer: Trainer | None = None

    # ----------------------------------------------------------------------------------------- public API
    def add_tokens(self, generated: int = 0, trained: int = 0) -> None:
        """Add this rank's tokens (sampled rollouts, trained tokens); summed over ranks at the end."""
        self._generated += int(generated)
        self._trained += int(trained)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a block as phase ``name`` (e.g. ``rollout``, ``scoring``, ``training``); max over ranks at the end."""
        if self.clock is None:
            yield
            return
        with self.clock.phase(name):
            yield

    # ----------------------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.strategy.root_device.type == "cuda":
            reset_cuda_peak()
        model = getattr(pl_module, "model", None)
        self._parameters = parameter_count(model if model is not None else pl_module)
        if "FSDP" in type(trainer.strategy).__name__:  # each rank holds a shard of every flat parameter
            self._parameters = int(self._gather(trainer, [float(self._parameters)]).sum())
        self._generated = self._trained = 0
        self._trained_on_device = None
        self._trainer = trainer  # state_dict() gets no trainer
        self.clock = StageClock(exclude=other_rank_pids(trainer))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.count_batches or not isinstance(batch, dict):
            return
        if "num_targets" in batch:
            self._trained += int(batch["num_targets"])
        elif "labels" in batch:
            count = (batch["labels"][:, 1:] != -100).sum()
            self._trained_on_device = count if self._trained_on_device is None else self._trained_on_device + count

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.clock is None:
            return
        self.record = self._combine(trainer)
        if trainer.is_global_zero:
            write_json(Path(trainer.default_root_dir) / COST_FILE, {"cost": self.record.to_dict()}, overwrite=True)

    # ----------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The figures so far (all ranks combined: Lightning saves a checkpoint from every rank at once), so a
        resumed fit continues them."""
        if self.clock is None or self._trainer is None:
            return dict(self._previous)
        record = self._combine(self._trainer)
        return {k: getattr(record, k) for k in (*_SUMMED, "peak_memory_bytes", "phases", "segments")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._previous = dict(state_dict)

    # ----------------------------------------------------------------------------------------- combining
    def _gather(self, trainer: Trainer, values: list[float]) -> torch.Tensor:
        """``values`` of every rank, one row per rank (float64 on this rank's device, back on the CPU)."""
        local = torch.tensor(values, dtype=torch.float64, device=trainer.strategy.root_device)
        if trainer.world_size == 1:
            return local.cpu().unsqueeze(0)
        return trainer.strategy.all_gather(local).reshape(trainer.world_size, -1).cpu()

    def _combine(self, trainer: Trainer) -> StageCost:
        """This run's figures on every rank, combined, plus the earlier runs' (resume)."""
        clock = self.clock
        trained = self._trained + (int(self._trained_on_device) if self._trained_on_device is not None else 0)
        names = sorted(clock.phases)
        memory = peak_memory(trainer.strategy.root_device.type)
        local = [clock.cpu_seconds(), float(self._generated), float(trained), float(memory or 0)]
        rows = self._gather(trainer, local + [clock.phases[n] for n in names])
        cpu, generated, trained_all = rows[:, :3].sum(0).tolist()
        previous = self._previous
        devices = trainer.world_size
        wall = clock.wall_seconds()
        phases = dict(previous.get("phases") or {})
        for name, seconds in zip(names, rows[:, 4:].max(0).values.tolist() if names else []):
            phases[name] = phases.get(name, 0.0) + seconds
        peaks = [previous.get("peak_memory_bytes"), int(rows[:, 3].max()) if memory is not None else None]
        return StageCost(
            stage=self.stage,
            wall_seconds=previous.get("wall_seconds", 0.0) + wall,
            devices=devices,
            device_kind=device_kind(trainer.strategy.root_device),
            device_seconds=previous.get("device_seconds", 0.0) + wall * devices,
            cpu_seconds=previous.get("cpu_seconds", 0.0) + cpu,
            tokens_generated=int(previous.get("tokens_generated", 0) + round(generated)),
            tokens_trained=int(previous.get("tokens_trained", 0) + round(trained_all)),
            parameters=self._parameters,
            peak_memory_bytes=max((p for p in peaks if p is not None), default=None),
            phases=phases,
            segments=int(previous.get("segments", 0)) + 1,
        )
