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
    return subprocess.run([sys.executable, "-m", "w2sr.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_help_lists_all_stages():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("fit", "validate", "test", "predict", "generate", "verify", "evaluate"):
        assert f"    {name} " in result.stdout


def test_configs_exist_and_open_with_their_command():
    assert len(CONFIGS) >= 8
    for path in CONFIGS:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# w2sr ") and f"--config lightning_configs/{path.relative_to(REPO / 'lightning_configs')}" in first, path


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
        main(["fit", "--config", str(REPO / "lightning_configs/quickstart/fit.yaml"), "--config", str(extra),
              "--trainer.max_steps", "5", "--data.variant", "correct", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["max_steps"] == 5 and config["data"]["variant"] == "correct"
    assert config["data"]["batch_size"] == 4 and config["model"]["finetune"] == "full"


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
    result = run_cli("verify", "--input", str(src), "--output", str(out), "--overwrite", "true",
                     "--trainer.logger", "false")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["correct"] is True
