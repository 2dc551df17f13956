"""A newcomer's first run through the real ``w2sr`` command (issue 28), on the tiny model: ``--ckpt_path last``
resumes from the last checkpoint every fit keeps (or exits 2 saying where it looked), a refused fit leaves no log
folder, every config mistake is reported at once with the closest valid name, commands without a training loop print
no accelerator banner. Output to files and the real model (SmolLM2 via ``w2sr convert-gguf``): tests/runtime/
test_output.py and tests/cli/test_real_model.py.
"""

from __future__ import annotations

import csv
import logging

import torch
from conftest import REPO, make_traces, run_cli

from w2sr.records.jsonl import write_jsonl


def _fit(tiny_model, traces_file, run, steps, *extra):
    return [
        "fit",
        "--model.model_name_or_path",
        tiny_model,
        "--model.lora.r",
        "4",
        "--data.train_file",
        str(traces_file),
        "--data.batch_size",
        "4",
        "--data.val_fraction",
        "0",
        "--trainer.max_steps",
        str(steps),
        "--trainer.accelerator",
        "cpu",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(run),
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def _logged_steps(version) -> list[int]:
    rows = csv.DictReader((version / "metrics.csv").open())
    return [int(row["step"]) for row in rows if row.get("train/loss")]


def test_ckpt_path_last_resumes_the_checkpoint_every_fit_keeps(tiny_model, traces_file, tmp_path, capsys):
    """Issue 28.1: no ModelCheckpoint configured, yet ``--ckpt_path last`` resumes (before: no last.ckpt existed,
    Lightning warned and trained from step 0 in version_1); with nothing to resume it exits 2 naming the folder."""
    run = tmp_path / "run"
    code, out = run_cli(_fit(tiny_model, traces_file, run, 3, "--ckpt_path", "last"), capsys)
    assert code == 2 and "no last checkpoint to resume from" in out and str(run / "checkpoints") in out
    assert not run.exists()  # refused before anything was made

    code, out = run_cli(_fit(tiny_model, traces_file, run, 3), capsys)
    assert code == 0, out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3

    resumed = _fit(tiny_model, traces_file, run, 5, "--ckpt_path", "last", "--model.overwrite_export", "true")
    code, out = run_cli(resumed, capsys)
    assert code == 0, out
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in " ".join(out.split())
    assert _logged_steps(run / "lightning_logs" / "version_0") == [0, 1, 2]
    assert _logged_steps(run / "lightning_logs" / "version_1") == [3, 4]  # steps 4 and 5, not a run from step 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5


def test_a_refused_fit_leaves_no_log_folder(tiny_model, tmp_path, capsys):
    """Issue 28.7: ``fit --data.variant correct`` without a correct trace exits 2 and leaves no empty
    ``lightning_logs/version_0`` (nor the run folder it made); an earlier version of the same run stays."""
    traces = tmp_path / "wrong.jsonl"
    write_jsonl(traces, (t.to_dict() for t in make_traces(8, error_rate=1.0)))
    run = tmp_path / "run"
    args = ["fit", "--model.model_name_or_path", tiny_model, "--data.train_file", str(traces)]
    args += ["--data.variant", "correct", "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(run)]
    code, out = run_cli(args, capsys)
    assert code == 2 and "no training traces in variant 'correct'" in out
    assert not run.exists()
    (run / "lightning_logs" / "version_0").mkdir(parents=True)
    (run / "lightning_logs" / "version_0" / "metrics.csv").write_text("epoch,step\n")
    code, out = run_cli(args, capsys)
    assert code == 2
    assert sorted(p.name for p in (run / "lightning_logs").iterdir()) == ["version_0"]


def test_config_mistakes_are_reported_at_once_with_the_closest_name(tiny_model, tmp_path, capsys):
    """Issue 28.8: the three misspellings of the issue on the command line and in a config file: all reported in one
    go with "did you mean", no 59-line usage dump, exit 2, nothing run."""
    args = ["generate", "--model.model_name_or_path", tiny_model, "--problems", "p.jsonl", "--output"]
    args += [str(tmp_path / "t.jsonl"), "--trainer.logger", "false"]
    wrong = ["--sampling.max_new_token", "16", "--sampling.temprature", "0.5", "--model.lora.rank", "4"]
    code, out = run_cli(args + wrong, capsys)
    assert code == 2 and "3 mistakes in the options of w2sr generate" in out
    assert "--sampling.max_new_token (command line): no such option; did you mean --sampling.max_new_tokens?" in out
    assert "--sampling.temprature (command line): no such option; did you mean --sampling.temperature?" in out
    assert "--model.lora.rank (command line): no such option; did you mean --model.lora.r?" in out
    assert "usage:" not in out and len(out.strip().splitlines()) <= 6, out

    config = tmp_path / "generate.yaml"
    config.write_text("sampling:\n  max_new_token: 16\n  temprature: 0.5\nmodel:\n  lora:\n    rank: 4\n")
    code, out = run_cli(args + ["--config", str(config)], capsys)
    assert code == 2 and f"model.lora.rank ({config}): no such key; did you mean model.lora.r?" in out
    assert f"sampling.temprature ({config}): no such key; did you mean sampling.temperature?" in out
    assert "sampling.max_new_token (" in out and "usage:" not in out
    assert not (tmp_path / "t.jsonl").exists()

    code, out = run_cli(args + ["--sampling.n", "many"], capsys)  # another kind of mistake: jsonargparse's words
    assert code == 2 and 'Parser key "sampling.n"' in out and "usage:" not in out


def test_fit_class_options_are_checked_by_name_with_no_abbreviation(tmp_path, capsys):
    """Issue 28.8 in fit's class_path mode (``model:`` / ``data:`` since the RL arm): the names of the class chosen
    (the default, a config's ``class_path`` or ``init_args``) get their "did you mean"; a prefix of a real option is a
    mistake, not an abbreviation that silently sets it (jsonargparse's class parser allows abbreviations)."""
    rl, sft = str(REPO / "lightning_configs/quickstart/rl.yaml"), str(REPO / "lightning_configs/quickstart/fit.yaml")
    root = ["--trainer.default_root_dir", str(tmp_path / "run")]
    code, out = run_cli(["fit", "--config", rl, *root, "--model.rl.num_generation", "2"], capsys)
    assert code == 2 and "did you mean --model.rl.num_generations?" in out, out
    code, out = run_cli(["fit", "--config", sft, *root, "--model.lora.rank", "4", "--data.batch_sise", "2"], capsys)
    assert code == 2 and "2 mistakes in the options of w2sr fit" in out, out
    assert "did you mean --model.lora.r?" in out and "did you mean --data.batch_size?" in out
    assert "Union subtypes" not in out and "usage:" not in out
    config = tmp_path / "rl.yaml"
    config.write_text("model:\n  class_path: w2sr.rl.GRPOStudent\n  init_args:\n    rl:\n      num_generation: 2\n")
    code, out = run_cli(["fit", "--config", rl, "--config", str(config), *root], capsys)
    assert code == 2 and "did you mean model.init_args.rl.num_generations?" in out, out
    assert not (tmp_path / "run").exists()


def test_commands_without_a_training_loop_print_no_accelerator_banner(tmp_path, capsys):
    """Issue 28.9: Lightning's "GPU available / TPU available" lines describe a Trainer that verify, report, export,
    generate and evaluate never run; fit keeps them."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        traces = tmp_path / "traces.jsonl"
        write_jsonl(traces, (t.to_dict() for t in make_traces(4)))
        code, out = run_cli(["verify", "--input", str(traces), "--output", str(tmp_path / "v.jsonl")], capsys)
        assert code == 0, out
        assert not [m for m in seen if m.startswith(("GPU available", "TPU available"))], seen
        from w2sr.runtime.quiet import hide_accelerator_banner

        hide_accelerator_banner("fit")
        logger.info("GPU available: False, used: False")
        assert seen[-1] == "GPU available: False, used: False"
    finally:
        logger.removeHandler(handler)
