"""Strategy / accelerator / precision mismatches end in exit 2 with one line naming the option, before the Trainer is
built (issue 17, item 7): ``W2SRCLI.before_instantiate_classes`` ->
``w2sr.training.strategies.check_strategy_available``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_cli

from w2sr.cli import main  # noqa: F401 - imported at collection: Lightning's log handler must not bind to a test's capsys
from w2sr.records.jsonl import InputError
from w2sr.training.strategies import check_strategy_available

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine without CUDA")


_run = run_cli


def _fit(tiny_model: str, train: Path, run: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--model.model_name_or_path",
        tiny_model,
        "--data.train_file",
        str(train),
        "--trainer.max_steps",
        "1",
        "--trainer.default_root_dir",
        str(run),
        "--model.export_dir",
        str(run / "export"),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def _assert_one_line(code: int, out: str, *needles: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out, out
    lines = [text for text in out.splitlines() if text.startswith("w2sr: error:")]
    assert len(lines) == 1, out
    for needle in needles:
        assert needle in lines[0], lines[0]


@CPU_ONLY
@pytest.mark.parametrize(
    "extra,needles",
    [
        (["--trainer.strategy", "fsdp"], ["trainer.strategy", "fsdp", "CUDA"]),
        (["--trainer.strategy", "w2sr_fsdp"], ["trainer.strategy", "CUDA"]),
        (["--trainer.strategy", "fsdp", "--trainer.accelerator", "cpu"], ["trainer.strategy", "CUDA"]),
        (["--trainer.strategy", "w2sr_deepspeed_stage_2"], ["trainer.strategy"]),
        (["--trainer.precision", "16-mixed", "--trainer.accelerator", "cpu"], ["trainer.precision", "16-mixed"]),
        (["--trainer.precision", "16-mixed"], ["trainer.precision"]),
        (["--trainer.precision", "transformer-engine"], ["trainer.precision"]),
        (["--trainer.accelerator", "gpu"], ["trainer.accelerator"]),
        (["--trainer.accelerator", "cuda"], ["trainer.accelerator"]),
    ],
)
def test_fit_refuses_a_gpu_only_setting_without_cuda_before_the_trainer(tmp_path, tiny_model, capsys, extra, needles):
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")  # the refusal must come before this file is read
    _assert_one_line(*_run(_fit(tiny_model, broken, tmp_path / "run", *extra), capsys), *needles)


@CPU_ONLY
def test_settings_that_run_on_the_cpu_pass(tmp_path, tiny_model, capsys):
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    # the in-process DDP run sets MASTER_PORT and binds a gloo store: conftest's autouse fixture undoes both
    for extra in (
        ["--trainer.precision", "bf16-mixed"],
        ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"],
        ["--trainer.precision", "32-true"],
    ):
        code, out = _run(_fit(tiny_model, broken, tmp_path / "run", *extra), capsys)
        assert code == 2 and "malformed JSON" in out, out  # got as far as reading the data


@CPU_ONLY
def test_check_function_names_each_option():
    check_strategy_available("ddp", accelerator="cpu", precision="bf16-mixed")
    check_strategy_available(None)
    with pytest.raises(InputError, match="trainer.strategy"):
        check_strategy_available({"class_path": "w2sr.strategies.W2SRFSDPStrategy"}, accelerator="auto")
    with pytest.raises(InputError, match="trainer.precision"):
        check_strategy_available("auto", accelerator="auto", precision="16")
    with pytest.raises(InputError, match="trainer.accelerator"):
        check_strategy_available("auto", accelerator="gpu")
