"""``w2sr fit`` with Lightning's TensorBoard, MLflow (local file store) and W&B (offline) loggers through
``trainer.logger``, and ``w2sr report --fit_runs`` reading the same curves from whichever of them wrote them; an empty
curve is explained in report.md, report.json, the terminal and on its panel.

One real fit on the tiny model logs to CSV and to every one of the three whose package is installed (a test skips
where its package is missing). Run: ``pytest tests/evaluation/test_fit_loggers.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from w2sr.evaluation.fit_curves import CURVES, read_fit_run
from w2sr.evaluation.report import make_report

OPTIONAL = {  # logger kind -> (package, Lightning class, its init_args relative to the run folder)
    "tensorboard": ("tensorboard", "TensorBoardLogger", {"save_dir": "tb", "name": "fit"}),
    "mlflow": ("mlflow", "MLFlowLogger", {"save_dir": "mlruns", "experiment_name": "w2sr"}),
    "wandb": ("wandb", "WandbLogger", {"save_dir": "wandb", "offline": True, "project": "w2sr"}),
}
FOLDER = {"csv": "csv", "tensorboard": "tb", "mlflow": "mlruns", "wandb": "wandb"}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Path:
    """One 6-step fit (validation and ReasoningAccuracy every 3 steps, train metrics every 2) logging to CSV and to
    every installed one of TensorBoard, MLflow and W&B; run as its own process (W&B starts a service process)."""
    from conftest import make_traces

    from w2sr.records.jsonl import write_jsonl

    run = tmp_path_factory.mktemp("logged")
    write_jsonl(run / "traces.jsonl", (t.to_dict() for t in make_traces()))
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run / "csv")}}]
    for package, cls, args in OPTIONAL.values():
        if installed(package):
            init = {k: str(run / v) if k == "save_dir" else v for k, v in args.items()}
            loggers.append({"class_path": f"lightning.pytorch.loggers.{cls}", "init_args": init})
    (run / "loggers.yaml").write_text(yaml.safe_dump({"trainer": {"logger": loggers}}))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 refuses its local file store without this opt-in
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **{name: str(run / "wandb-home") for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")},
    }
    command = [
        *(sys.executable, "-m", "w2sr.cli", "fit", "--config", str(run / "loggers.yaml")),
        *("--model.model_name_or_path", tiny_model, "--model.finetune", "full"),
        *("--model.export_dir", str(run / "export"), "--data.train_file", str(run / "traces.jsonl")),
        *("--data.batch_size", "4", "--data.val_fraction", "0.2", "--trainer.max_steps", "6"),
        *("--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(run)),
        *("--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false"),
        *("--trainer.log_every_n_steps", "2", "--trainer.val_check_interval", "3"),
        "--trainer.callbacks+=w2sr.callbacks.ReasoningAccuracy",
        *("--trainer.callbacks.every_n_steps=3", "--trainer.callbacks.num_problems=4"),
        "--trainer.callbacks.max_new_tokens=8",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=run)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "tensorboard", "mlflow", "wandb"])
def test_report_reads_the_same_curves_whichever_logger_wrote_them(logged_run, kind, tmp_path):
    if kind != "csv" and not installed(OPTIONAL[kind][0]):
        pytest.skip(f"{OPTIONAL[kind][0]} is not installed")
    reference = read_fit_run(logged_run / "csv")
    assert reference.logger == "csv"
    assert [s for s, _ in reference.curves["train/loss"]] == [1, 3, 5]  # every 2 steps (Lightning's step - 1)
    assert [s for s, _ in reference.curves["val/reasoning_acc"]] == [0, 3, 6]
    assert len(reference.curves["val/loss"]) == 2 and reference.notes == {}
    found = read_fit_run(logged_run / FOLDER[kind])
    assert found.logger == kind
    for key in CURVES:
        assert [s for s, _ in found.curves[key]] == [s for s, _ in reference.curves[key]], key
        assert [v for _, v in found.curves[key]] == pytest.approx([v for _, v in reference.curves[key]], rel=1e-6)
    results = tmp_path / "eval" / "results.json"  # any results.json: the report needs one run
    results.parent.mkdir()
    results.write_text(json.dumps({"model": "m", "grader": "paper", "benchmarks": {"x": {"avg@n": 0.5}}}))
    report = make_report([str(results)], tmp_path / "r", fit_runs=[f"{kind}={logged_run / FOLDER[kind]}"])
    assert report["fit_sources"][kind]["logger"] == kind
    assert report["fit_runs"][kind]["train/loss"] == [list(p) for p in found.curves["train/loss"]]
    assert "fit_notes" not in report
    assert f"| {kind} | {kind} (`" in (tmp_path / "r" / "report.md").read_text()


def _short_run(folder: Path, *, log_every: int | None, steps: int, val_fraction: float, callback: bool) -> Path:
    """A fit run folder as CSVLogger and LightningCLI leave it (metrics.csv, config.yaml), for a run whose
    ``log_every_n_steps`` may exceed its steps: only the rows such a run writes."""
    version = folder / "fit" / "version_0"
    version.mkdir(parents=True)
    rows = ["epoch,step,train/tokens,val/reasoning_acc"]
    rows += [",0,,0.0", f",{steps},,0.5"] if callback else []
    rows += [f"0,{steps - 1},1309.0,"]
    (version / "metrics.csv").write_text("\n".join(rows) + "\n")
    callbacks = [{"class_path": "w2sr.callbacks.ReasoningAccuracy", "init_args": {"every_n_steps": steps}}]
    config = {
        "trainer": {
            "max_steps": steps,
            "log_every_n_steps": log_every,
            "val_check_interval": None,
            "callbacks": callbacks if callback else None,
        },
        "data": {"val_fraction": val_fraction, "val_file": None},
    }
    (version / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_an_empty_curve_says_why_in_the_report_and_on_its_panel(tmp_path, capsys):
    """Issue 28: a 10-step fit with log_every_n_steps 50 had no train/loss column and the report drew an empty panel
    without a word."""
    from w2sr.evaluation.report import add_fit_curves, build_report, parse_run
    from w2sr.evaluation.report_plot import _curve_panels, _figure

    short = _short_run(tmp_path / "short", log_every=50, steps=10, val_fraction=0.0, callback=True)
    bare = _short_run(tmp_path / "bare", log_every=5, steps=10, val_fraction=0.1, callback=False)
    run = read_fit_run(short)
    assert run.notes["train/loss"] == "no train/loss logged: log_every_n_steps 50 > the run's 10 steps"
    assert run.notes["val/loss"] == "no val/loss logged: no validation set (data.val_fraction 0, no data.val_file)"
    assert "val/reasoning_acc" not in run.notes
    assert read_fit_run(bare).notes["val/reasoning_acc"] == "no val/reasoning_acc logged: no ReasoningAccuracy callback"
    unset = read_fit_run(_short_run(tmp_path / "unset", log_every=None, steps=10, val_fraction=0.1, callback=True))
    assert unset.notes["train/loss"].endswith("log_every_n_steps 50 (Lightning's default) > the run's 10 steps")
    results = tmp_path / "eval" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps({"model": "m", "grader": "paper", "benchmarks": {"x": {"avg@n": 0.5}}}))
    report = make_report([str(results)], tmp_path / "r", fit_runs=[str(short), str(bare)])
    assert report["fit_notes"]["short"]["train/loss"].endswith("log_every_n_steps 50 > the run's 10 steps")
    assert report["fit_runs"]["short"]["val/reasoning_acc"] == [[0, 0.0], [10, 0.5]]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| short | csv (`" in md and "no train/loss logged: log_every_n_steps 50 > the run's 10 steps" in md
    assert "fit run short: no train/loss logged: log_every_n_steps 50" in capsys.readouterr().out
    typed = build_report([parse_run(str(results))], None, None)
    add_fit_curves(typed, [str(short), str(bare)])
    fig, grid = _figure(typed, True)
    _curve_panels(fig, grid, typed)
    panel = {ax.get_title(): " ".join(t.get_text() for t in ax.texts) for ax in fig.axes}
    assert "short: no train/loss logged: log_every_n_steps 50 >" in panel["train/loss"].replace("\n", " ")
    assert "bare: no val/reasoning_acc logged: no ReasoningAccuracy" in panel["val/reasoning_acc"].replace("\n", " ")
