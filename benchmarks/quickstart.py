"""Quickstart figures: run ``make quickstart`` and record the before/after accuracy and the wall time.

The embedded default (toy arithmetic, programmatic weak teacher, tiny random-init student) goes through
generate -> verify -> fit -> evaluate; this script times the whole ``make quickstart`` (set-up included when the
virtual environment is new) and writes ``benchmarks/results/quickstart.json`` with the report rows, the teacher's
trace accuracy and the machine. Run from the repository root: ``python benchmarks/quickstart.py``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    subprocess.run(["make", "quickstart"], cwd=ROOT, check=True)
    seconds = time.perf_counter() - started
    run = ROOT / "runs" / "quickstart"
    report = json.loads((run / "report" / "report.json").read_text())
    rows = [{"run": name, **cell} for name, cell in next(iter(report["benchmarks"].values())).items()]
    rows.append({"run": "teacher traces", "accuracy": report.get("teacher", {}).get("accuracy")})
    fit_log = sorted((run / "fit").glob("version_*/metrics.csv"))
    curve = []
    if fit_log:
        import csv

        with fit_log[-1].open() as handle:
            curve = [(int(r["step"]), float(r["val/reasoning_acc"])) for r in csv.DictReader(handle)
                     if r.get("val/reasoning_acc")]
    result = {
        "command": "python benchmarks/quickstart.py  (runs: make quickstart)",
        "wall_seconds": round(seconds, 1),
        "report": rows,
        "val_reasoning_acc_during_fit": curve,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count()},
        "load_average_before": load_before,
    }
    out = ROOT / "benchmarks" / "results" / "quickstart.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
