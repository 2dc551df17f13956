"""The w2sr command: subcommands, every shipped YAML config parses, bad input exits 2 and writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from w2sr.cli import main

CONFIGS = sorted((REPO / "lightning_configs").rglob("*.yaml"))


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "w2sr.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_lists_all_stages():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("fit", "validate", "test", "predict", "generate", "verify", "evaluate"):
        assert f"    {name} " in result.stdout


def test_configs_exist_and_open_with_their_command():
    assert len(CONFIGS) >= 8
    for path in CONFIGS:
        first = path.read_text().splitlines()[0]
        assert (
            first.startswith("# w2sr ")
            and f"--config lightning_configs/{path.relative_to(REPO / 'lightning_configs')}" in first
        ), path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_validates(path, capsys):
    """Each config parses for the subcommand its first line names (types, choices, class paths)."""
    subcommand = path.read_text().splitlines()[0].split()[2]
    extra = ["--problems", "x.jsonl"] if "--problems PATH_OR_HUB_ID" in path.read_text().splitlines()[0] else []
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(path), *extra, "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert "trainer" in config and "model" in config


def test_stacked_configs_and_overrides(tmp_path, capsys):
    extra = tmp_path / "more.yaml"
    extra.write_text("data:\n  variant: incorrect\n  batch_size: 4\ntrainer:\n  max_steps: 7\n")
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(REPO / "lightning_configs/quickstart/fit.yaml"),
                "--config",
                str(extra),
                "--trainer.max_steps",
                "5",
                "--data.variant",
                "correct",
                "--print_config",
            ]
        )
    config = yaml.safe_load(capsys.readouterr().out)
    # fit prints model: / data: in LightningCLI's subclass form (class_path + init_args; flat keys are accepted)
    data, model = config["data"]["init_args"], config["model"]["init_args"]
    assert config["model"]["class_path"] == "w2sr.training.module.StudentModule"
    assert config["data"]["class_path"] == "w2sr.training.datamodule.TraceDataModule"
    assert config["trainer"]["max_steps"] == 5 and data["variant"] == "correct"
    assert data["batch_size"] == 4 and model["finetune"] == "full"


def test_malformed_input_exits_2_naming_file_line_field(tmp_path):
    bad = tmp_path / "traces.jsonl"
    good = {"id": "1", "problem": "p", "answer": "2", "completion": "\\boxed{2}"}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"id": "2", "problem": "p", "answer": "3"}) + "\n")
    out = tmp_path / "verified.jsonl"
    result = run_cli("verify", "--input", str(bad), "--output", str(out), "--trainer.logger", "false")
    assert result.returncode == 2
    assert f"{bad}:2" in result.stderr and "completion" in result.stderr
    assert not out.exists()
    bad.write_text(json.dumps(good) + "\n{not json\n")
    result = run_cli("verify", "--input", str(bad), "--output", str(out), "--trainer.logger", "false")
    assert result.returncode == 2 and f"{bad}:2" in result.stderr and not out.exists()


def test_existing_output_is_kept_without_overwrite(tmp_path):
    src = tmp_path / "traces.jsonl"
    src.write_text(json.dumps({"id": "1", "problem": "p", "answer": "2", "completion": "\\boxed{2}"}) + "\n")
    out = tmp_path / "verified.jsonl"
    out.write_text("precious\n")
    result = run_cli("verify", "--input", str(src), "--output", str(out), "--trainer.logger", "false")
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert out.read_text() == "precious\n"
    result = run_cli(
        "verify", "--input", str(src), "--output", str(out), "--overwrite", "true", "--trainer.logger", "false"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["correct"] is True


@pytest.mark.parametrize(
    "args, field",
    [
        (["--prompt.template", "nope"], "prompt.template"),
        (["--sampling.n", "0"], "sampling.n"),
        (["--sampling.top_p", "1.5"], "sampling.top_p"),
    ],
)
def test_bad_option_values_exit_2_naming_the_option(tmp_path, tiny_model, args, field):
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "1", "problem": "Compute 1 + 2.", "answer": "3"}) + "\n")
    result = run_cli(
        "generate",
        "--model.model_name_or_path",
        tiny_model,
        "--backend",
        "toy",
        "--problems",
        str(problems),
        "--output",
        str(tmp_path / "t.jsonl"),
        "--trainer.logger",
        "false",
        *args,
    )
    assert result.returncode == 2, result.stderr
    assert field in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "t.jsonl").exists()


def _fit_args(tiny_model, traces_file, run, steps):
    return [
        "fit",
        "--model.model_name_or_path",
        tiny_model,
        "--model.lora.r",
        "4",
        "--model.export_dir",
        str(run / "export"),
        "--data.train_file",
        str(traces_file),
        "--data.batch_size",
        "4",
        "--trainer.max_steps",
        str(steps),
        "--trainer.accelerator",
        "cpu",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
    ]


def test_resume_from_checkpoint_through_the_cli(tmp_path, tiny_model, traces_file):
    """fit, then resume with --ckpt_path: the loop state is restored and command-line values win."""
    import torch

    run = tmp_path / "run"
    main(_fit_args(tiny_model, traces_file, run, 3))
    [ckpt] = list((run / "checkpoints").glob("*.ckpt"))
    assert torch.load(ckpt, weights_only=False)["global_step"] == 3
    with pytest.raises(SystemExit) as err:  # a finished run's export is not replaced by accident
        main(_fit_args(tiny_model, traces_file, run, 5) + ["--ckpt_path", str(ckpt)])
    assert err.value.code == 2
    main(_fit_args(tiny_model, traces_file, run, 5) + ["--ckpt_path", str(ckpt), "--model.overwrite_export", "true"])
    card = json.loads((run / "export" / "w2sr_student.json").read_text())
    assert card["global_step"] == 5 and card["lora"]["r"] == 4


def test_test_and_predict_subcommands(tmp_path, tiny_model, traces_file):
    common = [
        "--model.model_name_or_path",
        tiny_model,
        "--data.batch_size",
        "8",
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    main(["test", *common, "--data.test_file", str(traces_file)])
    scores = tmp_path / "scores.jsonl"
    main(
        [
            "predict",
            *common,
            "--data.predict_file",
            str(traces_file),
            "--trainer.callbacks+=w2sr.callbacks.TraceScoreWriter",
            f"--trainer.callbacks.output={scores}",
        ]
    )
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == 40 and all(r["nll"] > 0 and r["tokens"] > 0 and "#0" in r["key"] for r in rows)
