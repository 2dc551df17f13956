"""Every private Lightning (and torch) API w2sr relies on, checked by name, signature and use, so that a release
that changes one fails here, in a second, instead of deep inside a run. Lift the ``lightning<2.7`` pin knowingly:
run this file against the new release first.

Run: ``pytest tests/layout/test_lightning_private.py``.
"""

from __future__ import annotations

import inspect

import pytest
import torch


def params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_cli_hooks_w2sr_overrides() -> None:
    """w2sr.cli: ``_parse_ckpt_path`` (skipped so resume keeps the given config) and ``_prepare_subcommand_parser``
    (short ``--help``) are still LightningCLI's and still called by it."""
    from lightning.pytorch.cli import LightningCLI

    source = inspect.getsource(LightningCLI)
    assert params(LightningCLI._parse_ckpt_path) == ["self"]
    assert "self._parse_ckpt_path()" in source
    assert params(LightningCLI._prepare_subcommand_parser)[:3] == ["self", "klass", "subcommand"]
    assert "self._prepare_subcommand_parser(" in source


def test_module_trainer_field() -> None:
    """w2sr.training.module / fit_checks: ``LightningModule._trainer`` is the field behind ``.trainer``."""
    from lightning.pytorch import LightningModule

    module = LightningModule()
    assert module._trainer is None
    with pytest.raises(RuntimeError):
        module.trainer  # noqa: B018 - why w2sr reads _trainer before the module is attached
    sentinel = object()
    module._trainer = sentinel
    assert module.trainer is sentinel


def test_fit_loop_loader_state_hook() -> None:
    """w2sr.training.resume: the checkpoint's dataloader states wait in ``_combined_loader_states_to_load`` and
    ``_load_combined_loader_states()`` loads them."""
    from lightning.pytorch import Trainer

    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loop = trainer.fit_loop
    assert hasattr(loop, "_combined_loader_states_to_load")
    assert params(type(loop)._load_combined_loader_states) == ["self"]
    assert "_combined_loader_states_to_load" in inspect.getsource(type(loop)._load_combined_loader_states)


def test_rich_progress_bar_description_hook() -> None:
    """w2sr.runtime.progress: RichProgressBar makes its train text in ``_get_train_description(current_epoch)``."""
    from lightning.pytorch.callbacks import RichProgressBar

    assert params(RichProgressBar._get_train_description) == ["self", "current_epoch"]
    assert "self._get_train_description(" in inspect.getsource(RichProgressBar)
    from w2sr.runtime.progress import StepRichProgressBar

    assert StepRichProgressBar._get_train_description is not RichProgressBar._get_train_description


def test_fsdp_strategy_private_fields() -> None:
    """w2sr.training.strategies.prepare_strategy / module.on_save_checkpoint: FSDPStrategy keeps its choices in
    ``_activation_checkpointing_kwargs`` and ``_state_dict_type``, set by the constructor."""
    from lightning.pytorch.strategies import FSDPStrategy

    plain = FSDPStrategy()
    assert plain._activation_checkpointing_kwargs == {} and plain._state_dict_type == "full"
    chosen = FSDPStrategy(activation_checkpointing_policy={torch.nn.Linear}, state_dict_type="sharded")
    assert chosen._activation_checkpointing_kwargs and chosen._state_dict_type == "sharded"


def test_deepspeed_config_hook() -> None:
    """w2sr.training.strategies.W2SRDeepSpeedStrategy: ``_init_config_if_needed()`` fills ``config`` early."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    assert params(DeepSpeedStrategy._init_config_if_needed) == ["self"]
    assert "_format_config()" in inspect.getsource(DeepSpeedStrategy._init_config_if_needed)


def test_deepspeed_accumulation_hooks() -> None:
    """w2sr.training.strategies.W2SRDeepSpeedStrategy: the loop's own step decision ``fit_loop._should_accumulate()``
    (read to set the engine's boundary) and ``DeepSpeedStrategy._auto_select_batch_size()`` (replaced)."""
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
    from lightning.pytorch.strategies import DeepSpeedStrategy

    assert params(_TrainingEpochLoop._should_accumulate) == ["self"]
    assert "handles_gradient_accumulation" in inspect.getsource(_TrainingEpochLoop._should_accumulate)
    assert params(DeepSpeedStrategy._auto_select_batch_size) == ["self"]
    assert "self._auto_select_batch_size()" in inspect.getsource(DeepSpeedStrategy)


def test_fabric_fsdp_checkpoint_helpers() -> None:
    """w2sr.training.export: the sharded state-dict context and DCP save of Lightning's FSDP checkpoints."""
    from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save, _get_sharded_state_dict_context

    assert params(_distributed_checkpoint_save) == ["converted_state", "path"]
    assert params(_get_sharded_state_dict_context) == ["module"]


def test_torch_private_names() -> None:
    """w2sr.training.strategies: torch's FSDP policy protocol; w2sr.training.resume: LambdaLR's ``_last_lr``."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy, _Policy

    assert params(ModuleWrapPolicy._run_policy) == ["self", "root_module", "ignored_modules", "root_kwargs"]
    assert issubclass(ModuleWrapPolicy, _Policy)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    scheduler._last_lr = [0.25]
    assert scheduler.get_last_lr() == [0.25]


def test_cli_core_arguments_fields() -> None:
    """w2sr.cli.W2SRCLI.add_core_arguments_to_parser (subclass mode for the training stages only): LightningCLI
    reads the private ``_datamodule_class`` and the ``subclass_mode_model`` / ``subclass_mode_data`` fields there,
    and its constructor sets them."""
    from lightning.pytorch.cli import LightningCLI

    core = inspect.getsource(LightningCLI.add_core_arguments_to_parser)
    assert "self._datamodule_class" in core and "subclass_mode=self.subclass_mode_model" in core
    assert "subclass_mode=self.subclass_mode_data" in core
    init = inspect.getsource(LightningCLI.__init__)
    assert "self._datamodule_class =" in init and "self.subclass_mode_data =" in init
    assert "self.add_core_arguments_to_parser(parser)" in inspect.getsource(LightningCLI._add_arguments)
