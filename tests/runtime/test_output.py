"""Output that reads well where it goes to a file (issue 28.5, 28.9): a real ``w2sr`` command with stdout and stderr
redirected to files, no terminal anywhere, as under Slurm: rich tables at their full width (no "benc…"), and no
Lightning accelerator banner for a command that runs no training loop.

Run: ``pytest tests/runtime/test_output.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

LONG_NAME = "a_rather_long_benchmark_name_for_the_table"


def test_tables_keep_their_full_width_and_no_banner_when_output_is_a_file(tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    rows = [
        {"id": f"p{i}", "completion": f"so \\boxed{{{i % 2}}}", "answer": "1", "source": LONG_NAME} for i in range(6)
    ]
    predictions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "w2sr.cli", "evaluate", "--predictions", str(predictions)]
    command += ["--output_dir", str(tmp_path / "eval"), "--trainer.logger", "false"]
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, timeout=600)
    stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert done.returncode == 0, stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    low, high = results["benchmarks"][LONG_NAME]["ci95"]
    [row] = [line for line in stdout.splitlines() if LONG_NAME in line]  # the whole name on one line
    assert f"{100 * low:.1f}" in row and f"{100 * high:.1f}" in row, row  # the interval column whole
    assert "…" not in stdout and max(map(len, stdout.splitlines())) > 80
    assert "benchmark" in stdout and "problems" in stdout  # headers not cut either
    assert "GPU available" not in stderr and "TPU available" not in stderr
