"""Sharded training strategies for ``w2sr fit``: Lightning's FSDP and DeepSpeed, set up for Hugging Face LMs.

Two ways to ask for FSDP, both through Lightning's own ``FSDPStrategy`` (nothing home-made):

* ``--trainer.strategy fsdp`` (Lightning's name): before the model is built, :func:`prepare_strategy` fills in
  what the user left unset from the model's config — the auto-wrap policy (one FSDP unit per decoder layer, the
  class named by the model's ``_no_split_modules``) and per-layer activation checkpointing — and switches the
  checkpoint format to ``sharded`` (a ``full`` state dict gathers a 7B model's 28 GB of fp32 weights on rank 0).
* ``strategy: {class_path: w2sr.strategies.W2SRFSDPStrategy}`` in YAML (or ``--trainer.strategy w2sr_fsdp``): the
  same defaults, spelled out, with every ``FSDPStrategy`` argument available
  (``sharding_strategy: HYBRID_SHARD`` for multi-node, ``cpu_offload: true``, ...).

Mixed precision comes from ``trainer.precision: bf16-mixed`` (Lightning builds FSDP's ``MixedPrecision``).
DeepSpeed: ``W2SRDeepSpeedStrategy`` (``w2sr_deepspeed_stage_2`` / ``w2sr_deepspeed_stage_3``) is Lightning's
``DeepSpeedStrategy`` that, for ZeRO-3, tells transformers about the DeepSpeed config so ``from_pretrained`` in
``configure_model`` loads the weights straight into partitions. DeepSpeed is the optional extra
``pip install "w2sr[deepspeed]"``; :func:`check_strategy_available` refuses early (exit 2) when it is missing.
Exercised by ``pytest tests/test_sharded.py``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from w2sr.jsonl import InputError


def decoder_layer_classes(model_name_or_path: str, trust_remote_code: bool = False) -> set[type]:
    """The decoder-layer module classes of a causal LM, from its config alone (no weights are read).

    The model class's ``_no_split_modules`` names them (e.g. ``Qwen2DecoderLayer``); they live in the modelling
    module of the model class.
    """
    import sys

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    model_class = AutoModelForCausalLM._model_mapping.get(type(config))  # noqa: SLF001 (transformers' own map)
    if model_class is None:
        raise InputError(f"no causal-LM class for model type {config.model_type!r}", path=model_name_or_path,
                         field="model.model_name_or_path")
    names = list(getattr(model_class, "_no_split_modules", None) or [])
    module = sys.modules[model_class.__module__]
    classes = {getattr(module, name) for name in names if hasattr(module, name)}
    if not classes:
        raise InputError(f"{model_class.__name__} names no decoder-layer class (_no_split_modules); pass "
                         "trainer.strategy.init_args.auto_wrap_policy explicitly", field="trainer.strategy")
    return classes


def layer_classes_of(model: Any) -> set[type]:
    """The decoder-layer classes of a built model: ``_no_split_modules`` or the class of ``model.model.layers[0]``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        inner = getattr(model, "model", None)
        layers = getattr(inner, "layers", None)
        if layers is not None and len(layers):
            found = {type(layers[0])}
    return found


def prepare_strategy(strategy: Any, model_name_or_path: str, trust_remote_code: bool = False,
                     hf_checkpointing: bool = False) -> None:
    """Fill in an ``FSDPStrategy``'s unset wrap and activation-checkpointing policies from the model's decoder
    layers, and make its checkpoints sharded. Other strategies are left as they are."""
    if not isinstance(strategy, FSDPStrategy):
        return
    classes: set[type] | None = None
    if "auto_wrap_policy" not in strategy.kwargs:
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = decoder_layer_classes(model_name_or_path, trust_remote_code)
        strategy.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(classes)
    checkpointing = getattr(strategy, "w2sr_activation_checkpointing", True)
    if checkpointing and not strategy._activation_checkpointing_kwargs:  # noqa: SLF001 (Lightning's field)
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = classes or decoder_layer_classes(model_name_or_path, trust_remote_code)
        strategy._activation_checkpointing_kwargs = {"auto_wrap_policy": ModuleWrapPolicy(classes)}  # noqa: SLF001
        if hf_checkpointing:
            rank_zero_warn("w2sr: FSDP checkpoints every decoder layer already; model.gradient_checkpointing: true "
                           "recomputes twice. Set it false under FSDP.")
    if strategy._state_dict_type != "sharded" and not isinstance(strategy, W2SRFSDPStrategy):  # noqa: SLF001
        rank_zero_info("w2sr: FSDP checkpoints are saved sharded (one file per rank; resume with --ckpt_path DIR)")
        strategy._state_dict_type = "sharded"  # noqa: SLF001
    if classes:
        rank_zero_info(f"w2sr: FSDP wraps each {', '.join(sorted(c.__name__ for c in classes))}")


class W2SRFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with the defaults for Hugging Face LMs: one FSDP unit per decoder layer,
    activation checkpointing per layer, sharded checkpoints (``last.ckpt/`` is a folder, resumable)."""

    strategy_name = "w2sr_fsdp"

    def __init__(self, *args: Any, activation_checkpointing_layers: bool = True,
                 state_dict_type: str = "sharded", **kwargs: Any) -> None:
        """
        Args:
            activation_checkpointing_layers: recompute each decoder layer's activations in the backward pass.
            state_dict_type: ``sharded`` (each rank saves its share) or ``full`` (gathered on rank 0; small models).
            *args, **kwargs: any ``lightning.pytorch.strategies.FSDPStrategy`` argument.
        """
        super().__init__(*args, state_dict_type=state_dict_type, **kwargs)  # type: ignore[arg-type]
        self.w2sr_activation_checkpointing = activation_checkpointing_layers

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="FSDP per decoder layer (w2sr)",
                                   override=True)


class W2SRDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy``; under ZeRO-3 transformers is told the DeepSpeed config (``HfDeepSpeedConfig``)
    so ``from_pretrained`` in ``configure_model`` builds the model partitioned and loads each weight into its
    partition, instead of every rank materialising the whole model."""

    @contextmanager
    def model_sharded_context(self) -> Generator[None, None, None]:
        if not self.zero_stage_3:
            with super().model_sharded_context():
                yield
            return
        from transformers.integrations import HfDeepSpeedConfig

        self._init_config_if_needed()
        self._hf_ds_config = HfDeepSpeedConfig(self.config)  # must stay alive while the model is built
        yield

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        for stage in (2, 3):
            strategy_registry.register(f"w2sr_deepspeed_stage_{stage}", cls, stage=stage, override=True,
                                       description=f"DeepSpeed ZeRO-{stage} for Hugging Face LMs (w2sr)")


W2SRFSDPStrategy.register_strategies(StrategyRegistry)
W2SRDeepSpeedStrategy.register_strategies(StrategyRegistry)  # instantiating it without deepspeed raises

DEEPSPEED_MISSING = ('DeepSpeed is not installed: install the optional extra with pip install "w2sr[deepspeed]" '
                     "(or choose --trainer.strategy fsdp / w2sr.strategies.W2SRFSDPStrategy)")


def wants_deepspeed(strategy: Any) -> bool:
    """Whether a ``trainer.strategy`` value (a name, a class_path mapping or an instance) asks for DeepSpeed."""
    if strategy is None:
        return False
    if isinstance(strategy, str):
        return "deepspeed" in strategy.lower()
    if isinstance(strategy, DeepSpeedStrategy):
        return True
    class_path = strategy.get("class_path") if hasattr(strategy, "get") else getattr(strategy, "class_path", None)
    return bool(class_path) and "deepspeed" in str(class_path).lower()


def check_strategy_available(strategy: Any) -> None:
    """Exit 2 before anything heavy when DeepSpeed is requested but not installed."""
    if wants_deepspeed(strategy) and importlib.util.find_spec("deepspeed") is None:
        raise InputError(DEEPSPEED_MISSING, field="trainer.strategy")
