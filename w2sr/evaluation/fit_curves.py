"""The training curves ``w2sr report --fit_runs DIR`` draws — ``val/reasoning_acc``, ``train/loss`` and ``val/loss``
over steps — from whichever Lightning logger wrote them, and why a curve is empty when it is.

A fit run folder (or one log file in it) is searched for, in this order of preference:

* ``metrics.csv`` — ``CSVLogger``;
* ``events.out.tfevents.*`` — ``TensorBoardLogger``, read with tensorboard's ``EventAccumulator`` (needs
  ``tensorboard``);
* an MLflow file store (``mlruns/<experiment>/<run>/metrics/<name>``, lines of ``timestamp value step``) —
  ``MLFlowLogger`` with a local ``save_dir`` / ``file:`` tracking URI; read as files (MLflow itself is not needed);
* ``run-<id>.wandb`` — ``WandbLogger(offline=True)``, read with ``wandb leet inspect --json`` (needs ``wandb``);
  steps are the ``trainer/global_step`` Lightning logs with each row.

When several runs of the chosen kind are there, the newest is read; a run folder with no log but a ``cost.json``
(``trainer.logger false``) has empty curves, said so. An empty curve gets a reason from the run's
``config.yaml`` (LightningCLI writes it beside the logs): ``log_every_n_steps`` above the run's steps, no
``ReasoningAccuracy`` callback, no validation set. Exercised by ``pytest tests/evaluation/test_report.py -k fit`` and
``pytest tests/evaluation/test_fit_loggers.py``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from w2sr.records.jsonl import InputError

Curve = list[tuple[int, float]]
LoggerKind = Literal["csv", "tensorboard", "mlflow", "wandb", "none"]
CURVES = ("val/reasoning_acc", "train/loss", "val/loss")
LIGHTNING_LOG_EVERY = 50  # Trainer(log_every_n_steps=None) logs every 50 steps
# curve -> the names a logger may have given it (Lightning appends _step / _epoch when a metric is logged both ways)
NAMES = {
    "val/reasoning_acc": ("val/reasoning_acc",),
    "train/loss": ("train/loss", "train/loss_step"),
    "val/loss": ("val/loss", "val/loss_epoch"),
}


@dataclass
class FitRun:
    """One fit run's curves, the log they came from, and why an empty curve is empty."""

    name: str
    logger: LoggerKind
    source: Path
    curves: dict[str, Curve]
    notes: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- readers
def _pick(columns: dict[str, Curve]) -> dict[str, Curve]:
    """The three curves from ``{metric name: points}``, each under the first of its names that has points."""
    return {key: next((columns[n] for n in NAMES[key] if columns.get(n)), []) for key in CURVES}


def read_csv(path: Path) -> dict[str, Curve]:
    """``CSVLogger``'s metrics.csv: one row per logging call, a ``step`` column."""
    curves: dict[str, Curve] = {key: [] for key in CURVES}
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for key, columns in NAMES.items():
                for column in columns:
                    if row.get(column) not in (None, "") and row.get("step") not in (None, ""):
                        curves[key].append((int(float(row["step"])), float(row[column])))
                        break
    return curves


def read_tensorboard(folder: Path) -> dict[str, Curve]:
    """Scalars of the TensorBoard event files in one folder (tensorboard's ``EventAccumulator``)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise InputError("TensorBoard event files need `pip install tensorboard` to be read", path=folder) from None
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    tags = events.Tags().get("scalars", [])
    return _pick({tag: [(int(e.step), float(e.value)) for e in events.Scalars(tag)] for tag in tags})


def read_mlflow(run: Path) -> dict[str, Curve]:
    """An MLflow file-store run folder: ``metrics/<name>`` files of ``timestamp value step`` lines."""
    columns: dict[str, Curve] = {}
    for file in sorted((run / "metrics").rglob("*")):
        if file.is_file():
            points = [line.split() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
            name = file.relative_to(run / "metrics").as_posix()
            columns[name] = [(int(p[2]), float(p[1])) for p in points if len(p) >= 3]
    return _pick(columns)


def read_wandb(path: Path) -> dict[str, Curve]:
    """A W&B run log (``run-<id>.wandb``): its history rows, printed as JSON by ``wandb leet inspect --json``."""
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InputError(f"cannot read the W&B run log ({err})", path=path) from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(
            f"cannot read the W&B run log with `wandb leet inspect --json` (needs wandb with `wandb leet`): {why}",
            path=path,
        )
    columns: dict[str, Curve] = {}
    for line in done.stdout.splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        row = (record.get("history") or {}).get("item") or {}
        step = row.get("trainer/global_step")
        for name, value in row.items():
            if step is not None and isinstance(value, (int, float)) and not name.startswith("_"):
                columns.setdefault(name, []).append((int(step), float(value)))
    return _pick(columns)


# ------------------------------------------------------------------------------------------------- finding the log
def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def _mlflow_runs(folder: Path) -> list[Path]:
    """Run folders of an MLflow file store under ``folder`` (a run folder has ``meta.yaml`` and ``metrics/``)."""
    if (folder / "metrics").is_dir() and (folder / "meta.yaml").is_file():
        return [folder]
    return [
        m.parent
        for m in folder.rglob("metrics")
        if m.is_dir() and (m.parent / "meta.yaml").is_file() and ".trash" not in m.parts
    ]


READERS: dict[LoggerKind, Callable[[Path], dict[str, Curve]]] = {
    "csv": read_csv,
    "tensorboard": read_tensorboard,
    "mlflow": read_mlflow,
    "wandb": read_wandb,
    "none": lambda _: {key: [] for key in CURVES},
}


def find_log(folder: Path) -> tuple[LoggerKind, Path]:
    """The logger kind and the file (or folder) to read, by the order of preference in the module docstring."""
    if folder.is_file():
        name = folder.name
        if name.endswith(".csv"):
            return "csv", folder
        if name.startswith("events.out.tfevents"):
            return "tensorboard", folder.parent
        if name.endswith(".wandb"):
            return "wandb", folder
        raise InputError("not a log file w2sr reads (metrics.csv, events.out.tfevents.*, *.wandb)", path=folder)
    if not folder.is_dir():
        raise InputError("no such fit run folder", path=folder)
    events = _newest(list(folder.rglob("events.out.tfevents.*")))
    found: list[tuple[LoggerKind, Path | None]] = [
        ("csv", _newest(list(folder.rglob("metrics.csv")))),
        ("tensorboard", events.parent if events else None),
        ("mlflow", _newest(_mlflow_runs(folder))),
        ("wandb", _newest(list(folder.rglob("run-*.wandb")))),
    ]
    for kind, path in found:
        if path is not None:
            return kind, path
    if (folder / "cost.json").is_file():  # a fit run without a logger: its cost is still read
        return "none", folder
    raise InputError(
        "no training log under this folder (metrics.csv, TensorBoard events, an MLflow file store or an offline "
        "W&B run)",
        path=folder,
    )


# ------------------------------------------------------------------------------------------------- why empty
def run_config(source: Path, top: Path) -> dict[str, Any]:
    """The LightningCLI ``config.yaml`` nearest to the log, looking up to the ``--fit_runs`` folder ({} if none)."""
    here = source if source.is_dir() else source.parent
    top = top if top.is_dir() else top.parent
    while True:
        if (here / "config.yaml").is_file():
            loaded = yaml.safe_load((here / "config.yaml").read_text(encoding="utf-8"))
            return loaded if isinstance(loaded, dict) else {}
        if here == top or here.parent == here or top not in here.parents:
            return {}
        here = here.parent


def _has_accuracy_callback(trainer: dict[str, Any]) -> bool:
    callbacks = trainer.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    return any("ReasoningAccuracy" in str(c.get("class_path", c) if isinstance(c, dict) else c) for c in callbacks)


def empty_curve_notes(curves: dict[str, Curve], config: dict[str, Any]) -> dict[str, str]:
    """Why each empty curve is empty, as far as the run's config tells."""
    trainer, data = config.get("trainer") or {}, config.get("data") or {}
    steps = trainer.get("max_steps") if isinstance(trainer.get("max_steps"), int) else None
    if steps is None or steps <= 0:  # trained by epochs: the last step a curve has
        steps = max((s for points in curves.values() for s, _ in points), default=None)
    ran = f"the run's {steps} steps" if steps is not None else "the run's steps"
    notes = {}
    if not curves["train/loss"]:
        every = trainer.get("log_every_n_steps")
        default = every is None and "log_every_n_steps" in trainer
        every = LIGHTNING_LOG_EVERY if default else every
        too_rare = isinstance(every, int) and steps is not None and every > steps
        said = f"log_every_n_steps {every}" + (" (Lightning's default)" if default else "")
        notes["train/loss"] = "no train/loss logged: " + (
            f"{said} > {ran}" if too_rare else "the log holds no train/loss"
        )
    if not curves["val/reasoning_acc"]:
        notes["val/reasoning_acc"] = "no val/reasoning_acc logged: " + (
            "the log holds none" if _has_accuracy_callback(trainer) or not config else "no ReasoningAccuracy callback"
        )
    if not curves["val/loss"]:
        interval = trainer.get("val_check_interval")
        if data and not data.get("val_file") and not data.get("val_fraction"):
            why = "no validation set (data.val_fraction 0, no data.val_file)"
        elif isinstance(interval, int) and steps is not None and interval > steps:
            why = f"val_check_interval {interval} > {ran}"
        else:
            why = "the log holds none"
        notes["val/loss"] = f"no val/loss logged: {why}"
    return notes


# ------------------------------------------------------------------------------------------------- entry points
def read_fit_run(folder: str | Path, name: str | None = None) -> FitRun:
    """One ``--fit_runs`` entry: its curves from whichever logger wrote them, and why an empty one is empty."""
    folder = Path(folder)
    kind, source = find_log(folder)
    curves = READERS[kind](source)
    if kind == "none":
        notes = {key: f"no {key} logged: no training log in this run (trainer.logger false?)" for key in CURVES}
    else:
        notes = empty_curve_notes(curves, run_config(source, folder))
    return FitRun(name or folder.name or str(folder), kind, source, curves, notes)


def read_fit_metrics(folder: str | Path) -> dict[str, Curve]:
    """``val/reasoning_acc``, ``train/loss`` and ``val/loss`` over steps from a fit run's folder (any logger)."""
    return read_fit_run(folder).curves
