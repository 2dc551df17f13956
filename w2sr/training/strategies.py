"""Sharded training strategies for ``w2sr fit``: Lightning's FSDP and DeepSpeed, set up for Hugging Face LMs.

Two ways to ask for FSDP, both through Lightning's own ``FSDPStrategy`` (nothing home-made):

* ``--trainer.strategy fsdp`` (Lightning's name): :func:`prepare_strategy` (called in ``StudentModule.setup``) fills
  in what the user left unset — the auto-wrap policy :class:`DecoderLayerPolicy` (one FSDP unit per decoder layer,
  the class named by the model's ``_no_split_modules``, resolved on the built model) and per-layer activation
  checkpointing — and switches the checkpoint format to ``sharded`` (a ``full`` state dict gathers a 7B model's
  28 GB of fp32 weights on rank 0).
* ``strategy: {class_path: w2sr.strategies.W2SRFSDPStrategy}`` in YAML (or ``--trainer.strategy w2sr_fsdp``): the
  same defaults, spelled out, with every ``FSDPStrategy`` argument available
  (``sharding_strategy: HYBRID_SHARD`` for multi-node, ``cpu_offload: true``, ...).

Mixed precision comes from ``trainer.precision: bf16-mixed`` (Lightning builds FSDP's ``MixedPrecision``), with the
buffers left in their own dtype (:func:`keep_buffer_dtypes`: RoPE's ``inv_freq`` stays float32, as at inference).
DeepSpeed: ``W2SRDeepSpeedStrategy`` (``w2sr_deepspeed_stage_2`` / ``w2sr_deepspeed_stage_3``) is Lightning's
``DeepSpeedStrategy`` that, for ZeRO-3, tells transformers about the DeepSpeed config so ``from_pretrained`` in
``configure_model`` loads the weights straight into partitions. DeepSpeed is the optional extra
``pip install "w2sr[deepspeed]"``; :func:`check_strategy_available` refuses early (exit 2, before the Trainer is
built) when it is missing, and when FSDP, DeepSpeed, a ``gpu`` accelerator or a CUDA-only precision is asked for
without a CUDA GPU. Exercised by ``pytest tests/training/test_sharded.py tests/runtime/test_strategy_checks.py``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.accelerators import Accelerator
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, Strategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

# _Policy / _run_policy: torch's FSDP wrap-policy protocol (no public base class takes a policy resolved at wrap
# time); tests/layout/test_lightning_private.py fails if a release renames them
from torch.distributed.fsdp.wrap import ModuleWrapPolicy, _Policy

from w2sr.records.jsonl import InputError


def layer_classes_of(root: torch.nn.Module) -> set[type]:
    """The decoder-layer classes inside ``root`` (a LightningModule, a peft or a Hugging Face model): the classes
    named by a submodule's ``_no_split_modules`` (e.g. ``Qwen2DecoderLayer``), else the class of ``model.layers[0]``."""
    names: set[str] = set()
    for module in root.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    found = {type(m) for m in root.modules() if type(m).__name__ in names}
    if not found:
        for module in root.modules():
            layers = getattr(module, "layers", None)
            if isinstance(layers, torch.nn.ModuleList) and len(layers):
                return {type(layers[0])}
    return found


class DecoderLayerPolicy(_Policy):
    """FSDP wrap / activation-checkpointing policy: one unit per decoder layer of whatever model it is applied to.

    Resolved when FSDP wraps the model (after ``configure_model`` built it), so the same YAML serves every model.
    """

    def _run_policy(
        self, root_module: torch.nn.Module, ignored_modules: set[torch.nn.Module], root_kwargs: dict[str, Any]
    ) -> dict[torch.nn.Module, dict[str, Any]]:
        classes = layer_classes_of(root_module)
        if not classes:
            raise ValueError(
                "w2sr: found no decoder-layer class to wrap (no _no_split_modules, no model.layers); "
                "pass trainer.strategy.init_args.auto_wrap_policy explicitly"
            )
        rank_zero_info(f"w2sr: FSDP unit per {', '.join(sorted(c.__name__ for c in classes))}")
        return ModuleWrapPolicy(classes)._run_policy(root_module, ignored_modules, root_kwargs)


def prepare_strategy(strategy: Strategy, hf_checkpointing: bool = False) -> None:
    """Fill in an ``FSDPStrategy``'s unset wrap and activation-checkpointing policies (per decoder layer) and make its
    checkpoints sharded (unless it is a :class:`W2SRFSDPStrategy`, whose choice is kept). Others are left alone."""
    if not isinstance(strategy, FSDPStrategy):
        return
    strategy.kwargs.setdefault("auto_wrap_policy", DecoderLayerPolicy())
    # FSDPStrategy keeps its activation-checkpointing and state-dict choices in private fields that only its
    # constructor sets; a strategy given by name (--trainer.strategy fsdp) is already built here
    # (tests/layout/test_lightning_private.py)
    checkpointing = getattr(strategy, "w2sr_activation_checkpointing", True)
    if checkpointing and not strategy._activation_checkpointing_kwargs:  # noqa: SLF001 (Lightning's field)
        strategy._activation_checkpointing_kwargs = {"auto_wrap_policy": DecoderLayerPolicy()}  # noqa: SLF001
    if strategy._activation_checkpointing_kwargs and hf_checkpointing:  # noqa: SLF001
        rank_zero_warn(
            "w2sr: FSDP checkpoints every decoder layer already; model.gradient_checkpointing: true "
            "recomputes twice. Set it false under FSDP."
        )
    if strategy._state_dict_type != "sharded" and not isinstance(strategy, W2SRFSDPStrategy):  # noqa: SLF001
        rank_zero_info("w2sr: FSDP checkpoints are saved sharded (one file per rank; resume with --ckpt_path DIR)")
        strategy._state_dict_type = "sharded"  # noqa: SLF001
    keep_buffer_dtypes(strategy)


LOW_PRECISION = (torch.bfloat16, torch.float16)


def keep_buffer_dtypes(strategy: FSDPStrategy) -> None:
    """FSDP's mixed precision as Lightning builds it from ``trainer.precision`` (``bf16-mixed``, ``16-mixed``,
    ``*-true``) casts every floating-point buffer to the low precision, RoPE's ``inv_freq`` included, while inference
    (transformers, vLLM) computes the rotary angles from a float32 ``inv_freq``: at position 4,000 of a Qwen2.5 model
    the bf16 angles are off by up to 4.9 rad, so training would fit other positions than inference uses. Keep the
    precision's parameter and reduction dtypes and leave buffers in their own dtype (``buffer_dtype=None``). A
    ``mixed_precision`` the user gave is kept (with a warning when it casts buffers to a low precision)."""
    from torch.distributed.fsdp import MixedPrecision

    if strategy.mixed_precision is not None:
        if strategy.mixed_precision.buffer_dtype in LOW_PRECISION:
            rank_zero_warn(
                f"w2sr: the FSDP mixed_precision given casts buffers to {strategy.mixed_precision.buffer_dtype}, "
                "RoPE's inv_freq included (inference uses float32): set buffer_dtype to null"
            )
        return
    config = strategy.mixed_precision_config
    if config is not None and config.buffer_dtype in LOW_PRECISION:
        strategy.mixed_precision = MixedPrecision(
            param_dtype=config.param_dtype, reduce_dtype=config.reduce_dtype, buffer_dtype=None
        )


class W2SRFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with the defaults for Hugging Face LMs: one FSDP unit per decoder layer,
    activation checkpointing per layer, sharded checkpoints (``last.ckpt/`` is a folder, resumable)."""

    strategy_name = "w2sr_fsdp"

    def __init__(
        self, *args: Any, activation_checkpointing_layers: bool = True, state_dict_type: str = "sharded", **kwargs: Any
    ) -> None:
        """
        Args:
            activation_checkpointing_layers: recompute each decoder layer's activations in the backward pass.
            state_dict_type: ``sharded`` (each rank saves its share) or ``full`` (gathered on rank 0; small models).
            *args, **kwargs: any ``lightning.pytorch.strategies.FSDPStrategy`` argument.
        """
        kwargs.setdefault("auto_wrap_policy", DecoderLayerPolicy())
        if activation_checkpointing_layers and not kwargs.get("activation_checkpointing"):
            kwargs.setdefault("activation_checkpointing_policy", DecoderLayerPolicy())
        super().__init__(*args, state_dict_type=state_dict_type, **kwargs)  # type: ignore[arg-type]
        self.w2sr_activation_checkpointing = activation_checkpointing_layers

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="FSDP per decoder layer (w2sr)", override=True)


class W2SRDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy``; under ZeRO-3 transformers is told the DeepSpeed config (``HfDeepSpeedConfig``)
    so ``from_pretrained`` in ``configure_model`` builds the model partitioned and loads each weight into its
    partition, instead of every rank materialising the whole model.

    Gradient accumulation is Lightning's, as under DDP. Lightning's own ``DeepSpeedStrategy`` lets the engine
    accumulate: Lightning divides each micro-batch's loss by ``accumulate_grad_batches`` and ``engine.backward``
    divides it again (``scale_wrt_gas``, with ``gradient_accumulation_steps`` set to the same number), and the engine
    steps every ``gradient_accumulation_steps`` micro-batches counted across epochs, so an epoch's short last window
    is merged into the next epoch's first step (while Lightning's step count and LR schedule skip it). Here
    ``handles_gradient_accumulation`` is False, so Lightning calls ``engine.step()`` once per optimizer step, at the
    end of every window of the data plan (``w2sr.training.batching``) including an epoch's short last one; each
    micro-batch tells the engine whether it ends a step (``set_gradient_accumulation_boundary``, DeepSpeed's API for
    boundaries the caller owns) and ``engine.backward`` runs with ``scale_wrt_gas=False``. The gradient of a step is
    then the DDP one: ``StudentModule.training_step`` undoes Lightning's division and ZeRO averages over ranks.
    Lightning's own DeepSpeed names (``deepspeed_stage_3``, ...) are registered to this class too.
    """

    @property
    def handles_gradient_accumulation(self) -> bool:
        """False: Lightning decides where optimizer steps fall (and counts them, and steps the LR schedule there)."""
        return False

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Tell the engine whether this micro-batch ends an optimizer step before its forward and backward."""
        self.mark_step_boundary(args[0] if args else kwargs.get("batch"))
        return super().training_step(*args, **kwargs)

    def mark_step_boundary(self, batch: object) -> bool:
        """Set the engine's accumulation boundary to Lightning's (the data plan's ``step_end`` must agree)."""
        trainer = self.lightning_module.trainer
        # fit_loop._should_accumulate() (private): the very decision Lightning's loop makes for this micro-batch
        # (tests/layout/test_lightning_private.py)
        boundary = not trainer.fit_loop._should_accumulate()  # noqa: SLF001
        planned = batch.get("step_end") if isinstance(batch, dict) else None
        if planned is not None and bool(planned) != boundary:
            raise RuntimeError(
                f"w2sr: micro-batch {trainer.fit_loop.epoch_loop.batch_idx} of epoch {trainer.current_epoch}: the data "
                f"plan {'ends' if planned else 'does not end'} an optimizer step here but Lightning "
                f"{'does' if boundary else 'does not'} (trainer.limit_train_batches, or a loader not built by w2sr?)"
            )
        self.deepspeed_engine.set_gradient_accumulation_boundary(boundary)
        return boundary

    def backward(
        self, closure_loss: torch.Tensor, optimizer: torch.optim.Optimizer | None, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``engine.backward(loss, scale_wrt_gas=False)``: Lightning has already divided by the accumulation."""
        kwargs.setdefault("scale_wrt_gas", False)
        return super().backward(closure_loss, optimizer, *args, **kwargs)

    @contextmanager
    def block_backward_sync(self) -> Generator[None, None, None]:
        """No ``engine.no_sync()`` inside a step's window (ZeRO-2/3 refuse it, and the engine already reduces only
        where its boundary says so, or per backward for partitioned gradients)."""
        yield

    def _auto_select_batch_size(self) -> int:
        """DeepSpeed's ``train_micro_batch_size_per_gpu`` (throughput logs only) when the config has none: the data's
        ``batch_size``. Lightning's private method reads ``loader.batch_sampler.batch_size`` and fails on the step-plan
        loader, which has no batch sampler (tests/layout/test_lightning_private.py)."""
        datamodule = getattr(self.lightning_module.trainer, "datamodule", None)
        size = getattr(getattr(datamodule, "hparams", None), "batch_size", None)
        return int(size) if isinstance(size, int) and size > 0 else 1

    @contextmanager
    def model_sharded_context(self) -> Generator[None, None, None]:
        if not self.zero_stage_3:
            with super().model_sharded_context():
                yield
            return
        from transformers.integrations import HfDeepSpeedConfig

        # private DeepSpeedStrategy method: fills self.config from the strategy's arguments before setup() would
        self._init_config_if_needed()
        self._hf_ds_config = HfDeepSpeedConfig(self.config)  # must stay alive while the model is built
        yield

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        for stage in (2, 3):
            strategy_registry.register(
                f"w2sr_deepspeed_stage_{stage}",
                cls,
                stage=stage,
                override=True,
                description=f"DeepSpeed ZeRO-{stage} for Hugging Face LMs (w2sr)",
            )
        for name, entry in list(strategy_registry.items()):  # deepspeed, deepspeed_stage_3_offload, ...
            if entry.get("strategy") is DeepSpeedStrategy:
                strategy_registry.register(
                    name,
                    cls,
                    description=f"{entry['description']} (w2sr accumulation)",
                    override=True,
                    **entry["init_params"],
                )


W2SRFSDPStrategy.register_strategies(StrategyRegistry)
W2SRDeepSpeedStrategy.register_strategies(StrategyRegistry)  # instantiating it without deepspeed raises

DEEPSPEED_MISSING = (
    'DeepSpeed is not installed: install the optional extra with pip install "w2sr[deepspeed]" '
    "(or choose --trainer.strategy fsdp / w2sr.strategies.W2SRFSDPStrategy)"
)


def wants_deepspeed(strategy: str | Strategy | None) -> bool:
    """Whether a ``trainer.strategy`` value (a name, a class_path mapping or an instance) asks for DeepSpeed."""
    if strategy is None:
        return False
    if isinstance(strategy, str):
        return "deepspeed" in strategy.lower()
    if isinstance(strategy, DeepSpeedStrategy):
        return True
    class_path = strategy.get("class_path") if hasattr(strategy, "get") else getattr(strategy, "class_path", None)
    return bool(class_path) and "deepspeed" in str(class_path).lower()


def wants_fsdp(strategy: str | Strategy | None) -> bool:
    """Whether a ``trainer.strategy`` value (a name, a class_path mapping or an instance) asks for FSDP."""
    if strategy is None:
        return False
    if isinstance(strategy, str):
        return "fsdp" in strategy.lower()
    if isinstance(strategy, FSDPStrategy):
        return True
    class_path = strategy.get("class_path") if hasattr(strategy, "get") else getattr(strategy, "class_path", None)
    return bool(class_path) and "fsdp" in str(class_path).lower()


def _name(value: object) -> str:
    if isinstance(value, str) or value is None:
        return str(value)
    class_path = value.get("class_path") if hasattr(value, "get") else None
    return str(class_path or type(value).__name__)


# precisions Lightning cannot honour without CUDA: fp16 AMP becomes bf16 AMP on the CPU (silently, seen with
# lightning 2.6), transformer-engine needs CUDA
CUDA_PRECISIONS = ("16-mixed", "16", "transformer-engine", "transformer-engine-float16")


def check_strategy_available(
    strategy: str | Strategy | None, accelerator: str | Accelerator | None = None, precision: str | int | None = None
) -> None:
    """Exit 2 before the Trainer is built when a strategy, accelerator or precision cannot run here: DeepSpeed not
    installed; FSDP or DeepSpeed, a ``gpu``/``cuda`` accelerator, or a CUDA-only precision without a CUDA GPU."""
    if wants_deepspeed(strategy) and importlib.util.find_spec("deepspeed") is None:
        raise InputError(DEEPSPEED_MISSING, field="trainer.strategy")
    accel = accelerator.lower() if isinstance(accelerator, str) else accelerator
    cuda = torch.cuda.is_available()
    if isinstance(accel, str) and accel in ("gpu", "cuda") and not cuda:
        raise InputError(
            f"trainer.accelerator {accel}: no CUDA GPU is visible here; use --trainer.accelerator cpu (or auto)",
            field="trainer.accelerator",
        )
    on_cuda = cuda and (accel in (None, "auto", "gpu", "cuda") or "cuda" in type(accel).__name__.lower())
    if on_cuda:
        return
    where = f"accelerator {accel}" if isinstance(accel, str) and accel not in ("auto",) else "no CUDA GPU is visible"
    if wants_fsdp(strategy) or wants_deepspeed(strategy):
        kind = "FSDP" if wants_fsdp(strategy) else "DeepSpeed"
        raise InputError(
            f"trainer.strategy {_name(strategy)}: {kind} needs CUDA GPUs ({where}); use "
            "--trainer.strategy ddp (gloo on the CPU) or auto",
            field="trainer.strategy",
        )
    if str(precision) in CUDA_PRECISIONS:
        raise InputError(
            f"trainer.precision {precision} needs a CUDA GPU ({where}; Lightning would run bf16 instead "
            "of fp16 on the CPU); use bf16-mixed or 32-true",
            field="trainer.precision",
        )
