"""Option dataclasses check their values when made (issue 24, item 4): a bad value is refused with exit 2 and a
message naming the option, before any data is read or weight loaded; the strategy/accumulation check runs once,
before fit, not on every micro-batch.

Run: ``pytest tests/training/test_option_checks.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import run_cli

from w2sr.records.jsonl import InputError
from w2sr.training.datamodule import TraceDataModule
from w2sr.training.fit_checks import check_gradient_accumulation
from w2sr.training.loading import LoraOptions
from w2sr.training.module import SchedulerOptions, StudentModule


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: LoraOptions(r=0), "model.lora.r"),
        (lambda: LoraOptions(alpha=0), "model.lora.alpha"),
        (lambda: LoraOptions(dropout=1.0), "model.lora.dropout"),
        (lambda: LoraOptions(dropout=-0.1), "model.lora.dropout"),
        (lambda: LoraOptions(target_modules=[]), "model.lora.target_modules"),
        (lambda: SchedulerOptions(warmup_ratio=1.0), "model.scheduler.warmup_ratio"),
        (lambda: SchedulerOptions(warmup_ratio=-0.1), "model.scheduler.warmup_ratio"),
        (lambda: SchedulerOptions(name="step"), "model.scheduler.name"),
        (lambda: StudentModule(loss="fast"), "model.loss"),
        (lambda: TraceDataModule(val_fraction=1.0), "data.val_fraction"),
        (lambda: TraceDataModule(variant="best"), "data.variant"),
        (lambda: TraceDataModule(truncated="cut"), "data.truncated"),
    ],
)
def test_bad_values_are_refused_naming_the_option(make, field):
    with pytest.raises(InputError) as err:
        make()
    assert err.value.field == field and field in str(err.value)


def test_good_values_pass():
    assert LoraOptions(r=1, alpha=1, dropout=0.0, target_modules=["q_proj"]).r == 1
    assert SchedulerOptions(name="linear", warmup_ratio=0.0).warmup_ratio == 0.0
    assert TraceDataModule(val_fraction=0.0, variant="incorrect").hparams.variant == "incorrect"


@pytest.mark.parametrize(
    "args, field",
    [
        (["--model.lora.r", "0"], "model.lora.r"),
        (["--model.scheduler.warmup_ratio", "1.5"], "model.scheduler.warmup_ratio"),
        (["--data.val_fraction", "2"], "data.val_fraction"),
    ],
)
def test_fit_exits_2_naming_the_option(tmp_path, capsys, args, field):
    """``fit``'s ``model:`` / ``data:`` are class_path groups: jsonargparse wraps the check's error in its own."""
    code, out = run_cli(
        [
            "fit",
            "--model.model_name_or_path",
            str(tmp_path / "nowhere"),
            "--data.train_file",
            "t.jsonl",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            *args,
        ],
        capsys,
    )
    assert code == 2 and field in out and "Traceback" not in out, out


def test_a_strategy_that_accumulates_itself_is_refused_before_fit():
    def trainer(accumulate: int, handles: bool) -> SimpleNamespace:
        return SimpleNamespace(
            accumulate_grad_batches=accumulate, strategy=SimpleNamespace(handles_gradient_accumulation=handles)
        )

    with pytest.raises(InputError, match="accumulates gradients by itself") as err:
        check_gradient_accumulation(trainer(2, True))
    assert err.value.field == "trainer.strategy"
    check_gradient_accumulation(trainer(1, True))  # nothing to accumulate
    check_gradient_accumulation(trainer(4, False))  # Lightning accumulates (W2SRDeepSpeedStrategy, DDP, FSDP)


def test_the_training_step_checks_no_configuration():
    """The check ran inside ``training_step`` on every micro-batch; it is a pre-flight check now."""
    import inspect

    assert "handles_gradient_accumulation" not in inspect.getsource(StudentModule.training_step)
