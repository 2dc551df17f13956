"""The training curves ``w2sr report --fit_runs DIR`` draws: ``val/reasoning_acc`` and ``train/loss`` over steps
from a fit run's folder (Lightning's CSVLogger ``metrics.csv``).

Exercised by ``pytest tests/evaluation/test_report.py -k fit``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from w2sr.records.jsonl import InputError

Curve = list[tuple[int, float]]
CURVES = ("val/reasoning_acc", "train/loss")
# curve -> the columns that may hold it (Lightning writes ``train/loss_step`` when a metric is logged on_step and
# on_epoch)
COLUMNS = {"val/reasoning_acc": ("val/reasoning_acc",), "train/loss": ("train/loss", "train/loss_step")}


def read_fit_metrics(folder: str | Path) -> dict[str, Curve]:
    """``val/reasoning_acc`` and ``train/loss`` over steps from a fit run's CSVLogger ``metrics.csv``."""
    folder = Path(folder)
    files = [folder] if folder.is_file() else sorted(folder.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise InputError("no metrics.csv (Lightning CSVLogger) under this folder", path=folder)
    curves: dict[str, Curve] = {key: [] for key in CURVES}
    with files[-1].open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for key, columns in COLUMNS.items():
                for column in columns:
                    if row.get(column) not in (None, "") and row.get("step") not in (None, ""):
                        curves[key].append((int(float(row["step"])), float(row[column])))
                        break
    return curves
