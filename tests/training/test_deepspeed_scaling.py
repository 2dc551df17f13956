"""DeepSpeed under gradient accumulation (issue 17, item 5): the gradient of an optimizer step is
``sum(token NLL) / step_tokens`` exactly as on one device / under DDP, and steps fall where the data plan's steps end
(an epoch's short last window steps alone, counted by Lightning and by its LR schedule).

Lightning drives the strategy as in a real run: its config sets the engine's ``gradient_accumulation_steps`` to
``trainer.accumulate_grad_batches``, ``backward`` goes to ``engine.backward``, ``optimizer_step`` to ``engine.step``.
The engine is :class:`FakeEngine`, written from DeepSpeed 0.19.8's ``runtime/engine.py``: ``backward(loss,
scale_wrt_gas=True)`` divides the loss by ``gradient_accumulation_steps()``; ``step()`` updates the weights only when
``is_gradient_accumulation_boundary()`` (the flag given to ``set_gradient_accumulation_boundary``, else
``(micro_steps + 1) % gradient_accumulation_steps == 0``) and counts every call in ``micro_steps``. Where deepspeed
is importable the same runs also use the real engine (ZeRO-2 runs on the CPU with gloo). Lightning's DeepSpeed
strategy refuses CPUs only in ``setup_environment`` and the device-index check, which the tests skip. A ``gpu`` test
compares ZeRO-2
with accumulation 4 against a single-device run's first step on a CUDA GPU.

Run: ``pytest tests/training/test_deepspeed_scaling.py``.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import logging
import sys
import types

import lightning as L
import pytest
import torch
from conftest import make_traces
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from w2sr.records.jsonl import InputError, write_jsonl
from w2sr.training.datamodule import TraceDataModule
from w2sr.training.module import StudentModule
from w2sr.training.strategies import W2SRDeepSpeedStrategy

ACCUMULATE = 4
REAL_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


class FakeEngine(torch.nn.Module):
    """DeepSpeed's engine as far as accumulation goes (deepspeed 0.19.8 ``runtime/engine.py``)."""

    def __init__(
        self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict, lr_scheduler=None
    ) -> None:
        super().__init__()
        self.module, self.optimizer, self.config, self.lr_scheduler = module, optimizer, config, lr_scheduler
        self.micro_steps = self.global_steps = 0
        self._is_gradient_accumulation_boundary = None
        self.backward_kwargs: list[dict] = []

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def gradient_accumulation_steps(self) -> int:
        return self.config["gradient_accumulation_steps"]

    def backward(self, loss, retain_graph=False, scale_wrt_gas=True):
        self.backward_kwargs.append({"scale_wrt_gas": scale_wrt_gas})
        loss = loss / self.gradient_accumulation_steps() if scale_wrt_gas else loss
        loss.backward(retain_graph=retain_graph)
        return loss

    def is_gradient_accumulation_boundary(self) -> bool:
        if self._is_gradient_accumulation_boundary is None:
            return (self.micro_steps + 1) % self.gradient_accumulation_steps() == 0
        return self._is_gradient_accumulation_boundary

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        self._is_gradient_accumulation_boundary = is_boundary

    @contextlib.contextmanager
    def no_sync(self):  # Lightning enters it inside a step's window (the engine matches its DDP protocol)
        assert self.config.get("zero_optimization", {}).get("stage", 0) < 2, (
            "no_sync context manager is incompatible with gradient partitioning logic of ZeRO stage 2"
        )
        yield

    def step(self, lr_kwargs=None):
        if self.is_gradient_accumulation_boundary():
            if self.config.get("gradient_clipping", 0.0) > 0:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config["gradient_clipping"])
            self.optimizer.step()
            self.optimizer.zero_grad()
            if self.lr_scheduler is not None:
                self.lr_scheduler.step()
            self.global_steps += 1
        self.micro_steps += 1


def fake_deepspeed(engines: list) -> types.ModuleType:
    module = types.ModuleType("deepspeed")
    module.__spec__ = importlib.machinery.ModuleSpec("deepspeed", None)
    module.__version__ = "0.19.8"

    def initialize(
        args=None,
        model=None,
        optimizer=None,
        model_parameters=None,
        lr_scheduler=None,
        config=None,
        dist_init_required=None,
        **_,
    ):
        engines.append(FakeEngine(model, optimizer, config, lr_scheduler))
        return engines[-1], optimizer, None, lr_scheduler

    module.initialize = initialize
    module.DeepSpeedEngine = FakeEngine  # accelerate's unwrap_model imports it when deepspeed is installed
    module.init_distributed = lambda *args, **kwargs: None
    module.utils = types.SimpleNamespace(logging=types.SimpleNamespace(logger=logging.getLogger("fake_deepspeed")))
    module.checkpointing = types.SimpleNamespace(configure=lambda *args, **kwargs: None)
    module.zero = types.SimpleNamespace(  # ZeRO-3 only: nothing is partitioned, so gathering is a no-op
        Init=lambda enabled=True, **kwargs: contextlib.nullcontext(),
        GatheredParameters=lambda params, modifier_rank=None, **kwargs: contextlib.nullcontext(),
    )
    return module


def on_cpu(cls: type) -> type:
    """``cls`` without Lightning's CUDA-only check (``DeepSpeedStrategy.setup_environment``)."""
    return type(
        f"CPU{cls.__name__}",
        (cls,),
        {
            "setup_environment": lambda self: DDPStrategy.setup_environment(self),
            # the engine takes the device index as its rank (deepspeed.initialize(args.device_rank)); cpu has none
            "root_device": property(lambda self: torch.device("cpu", 0)),
        },
    )


@pytest.fixture
def engine_kind(request, monkeypatch):
    """``fake`` (always) or ``real`` (when deepspeed is importable): which engine Lightning builds."""
    import lightning.pytorch.strategies.deepspeed as lightning_deepspeed

    engines: list = []
    # CUDA device indices are checked against the local ranks; a CPU device has none
    monkeypatch.setattr(lightning_deepspeed, "_validate_device_index_selection", lambda devices: None)
    if request.param == "fake":
        monkeypatch.setitem(sys.modules, "deepspeed", fake_deepspeed(engines))
        monkeypatch.setattr(lightning_deepspeed, "_DEEPSPEED_AVAILABLE", True)
        monkeypatch.setattr(lightning_deepspeed, "_DEEPSPEED_GREATER_EQUAL_0_16", True)
    elif not REAL_DEEPSPEED:
        pytest.skip("deepspeed is not installed")
    else:
        monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    yield request.param, engines
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # ZeRO-3 runs leave transformers' global DeepSpeed config set
    if request.param == "real":
        import deepspeed.comm

        if deepspeed.comm.is_initialized():  # also drops DeepSpeed's references to the groups
            deepspeed.comm.destroy_process_group()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture
def short_window_traces(tmp_path):
    """20 training traces: batch_size 2 -> 10 micro-batches an epoch -> windows of 4, 4 and a short 2."""
    path = tmp_path / "verified.jsonl"
    write_jsonl(path, (t.to_dict() for t in make_traces(n=20)))
    return path


def train(tiny_model, traces, root, strategy, epochs: int = 2, max_steps: int = -1, **trainer_kwargs):
    """Full fine-tuning with SGD (its update is lr x gradient, so a wrongly scaled gradient shows in the weights)
    and a cosine schedule with warmup (a step left out or merged shows in the LR)."""
    torch.manual_seed(0)
    module = StudentModule(
        tiny_model,
        finetune="full",
        dtype="float32",
        loss="naive",
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
        export_dir=str(root / "export"),
    )
    data = TraceDataModule(str(traces), tokenizer=tiny_model, batch_size=2, val_fraction=0.0, cache_dir=None, seed=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        precision="32-true",
        max_epochs=epochs,
        max_steps=max_steps,
        accumulate_grad_batches=ACCUMULATE,
        gradient_clip_val=1e6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        **trainer_kwargs,
    )
    trainer.fit(module, data)
    return trainer, module, exported_weights(root / "export")


def exported_weights(folder) -> dict[str, torch.Tensor]:
    """The export's tensors, read as files (under ZeRO-3 the module's own parameters are partitions)."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    return weights


@pytest.mark.slow
@pytest.mark.parametrize("engine_kind,stage", [("fake", 2), ("real", 2), ("real", 3)], indirect=["engine_kind"])
def test_deepspeed_accumulation_equals_single_device(tiny_model, short_window_traces, tmp_path, engine_kind, stage):
    """Two epochs of 10 micro-batches, accumulation 4: the ZeRO-2 (and, with the real engine, ZeRO-3) run's exported
    weights, step count and final LR equal the single-device run's. Before the fix the engine divided the loss a
    second time (weights moved 1/4 as far) and stepped every 4 micro-batches counted across epochs (the short window
    merged into the next epoch). Seen with deepspeed 0.19.8 on the CPU: ZeRO-2 and ZeRO-3 within 6e-8 of it."""
    kind, engines = engine_kind
    ref_trainer, ref_module, ref_weights = train(tiny_model, short_window_traces, tmp_path / "ref", "auto")
    assert ref_trainer.global_step == 2 * 3  # windows 4, 4, 2 in each epoch

    ds_trainer, ds_module, ds_weights = train(
        tiny_model, short_window_traces, tmp_path / "ds", on_cpu(W2SRDeepSpeedStrategy)(stage=stage)
    )
    config = ds_trainer.strategy.config
    assert config["gradient_accumulation_steps"] == ACCUMULATE  # as Lightning configures the engine
    assert config["gradient_clipping"] == 1e6 and config["zero_optimization"]["stage"] == stage
    engine = ds_trainer.strategy.deepspeed_engine
    assert engine.global_steps == ref_trainer.global_step == ds_trainer.global_step
    if kind == "fake":
        assert engines == [engine] and {kw["scale_wrt_gas"] for kw in engine.backward_kwargs} == {False}
        assert len(engine.backward_kwargs) == 2 * 10
    assert ds_trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(
        ref_trainer.optimizers[0].param_groups[0]["lr"], abs=1e-12
    )
    for name, ref in ref_weights.items():
        torch.testing.assert_close(ds_weights[name], ref, rtol=1e-5, atol=1e-6, msg=name)
    assert set(ds_weights) == set(ref_weights)
    start = exported_weights(__import__("pathlib").Path(tiny_model))
    moved = max(float((ref_weights[k] - v).abs().max()) for k, v in start.items() if k in ref_weights)
    assert moved > 1e-3  # the runs did train (weights equal because both moved the same way)


@pytest.mark.parametrize("engine_kind", ["fake"], indirect=True)
def test_lightning_deepspeed_that_accumulates_itself_is_refused(tiny_model, short_window_traces, tmp_path, engine_kind):
    """Lightning's own class (``class_path: lightning.pytorch.strategies.DeepSpeedStrategy``) lets the engine
    accumulate: its first micro-batch is refused with one line naming the option instead of training at 1/4 of the
    gradient. (Lightning's names, ``deepspeed_stage_2`` ..., give the w2sr class.)"""
    from lightning.pytorch.strategies import StrategyRegistry

    assert StrategyRegistry["deepspeed_stage_2"]["strategy"] is W2SRDeepSpeedStrategy
    assert StrategyRegistry["deepspeed_stage_3_offload"]["init_params"]["offload_parameters"] is True
    with pytest.raises(InputError, match="accumulates gradients by itself") as err:
        # logging_batch_size_per_gpu: Lightning's own batch-size lookup fails on the step-plan loader (no batch sampler)
        train(
            tiny_model,
            short_window_traces,
            tmp_path,
            on_cpu(DeepSpeedStrategy)(stage=2, logging_batch_size_per_gpu=2),
            max_steps=1,
        )
    assert err.value.field == "trainer.strategy"


@pytest.mark.parametrize("engine_kind", ["fake"], indirect=True)
def test_plan_and_lightning_boundaries_must_agree(tiny_model, short_window_traces, tmp_path, engine_kind):
    """``limit_train_batches 6`` cuts the epoch inside the plan's second window: Lightning would step after
    micro-batch 6 with a loss scaled for the plan's 4-batch window, so the run stops with the reason."""
    with pytest.raises(RuntimeError, match="the data plan does not end an optimizer step here but Lightning does"):
        train(tiny_model, short_window_traces, tmp_path, on_cpu(W2SRDeepSpeedStrategy)(stage=2), limit_train_batches=6)


@pytest.mark.parametrize("engine_kind", ["fake"], indirect=True)
def test_zero3_full_export_writes_a_generation_config_that_ends_the_turn(short_window_traces, tmp_path, engine_kind):
    """The ZeRO-3 full export (parameters gathered module by module) wrote ``config.json`` but no
    ``generation_config.json`` (issue 26, item 8); now it writes one whose EOS ids end the turn, as every export's."""
    import json

    from conftest import turn_ending_base
    from transformers import AutoTokenizer

    from w2sr.training.export import sharding_of

    base = turn_ending_base(str(tmp_path / "base"))
    # transformers' ZeRO-3 loading (HfDeepSpeedConfig) needs the real package: the fake engine's model is built whole
    strategy = type(
        "ZeroThreeCPUDeepSpeedStrategy",
        (on_cpu(W2SRDeepSpeedStrategy),),
        {"model_sharded_context": contextlib.nullcontext},
    )
    trainer, _, weights = train(base, short_window_traces, tmp_path, strategy(stage=3), 1, 1)
    assert sharding_of(trainer.strategy) == "zero3" and weights
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = json.loads((tmp_path / "export" / "generation_config.json").read_text())
    assert config["eos_token_id"] == [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")]
    assert (tmp_path / "export" / "config.json").is_file()


def test_fake_engine_double_scaling_arithmetic():
    """The arithmetic of the bug, on the fake engine with Lightning's settings (gas = accumulate_grad_batches = 8,
    the ZeRO-3 paper config): w2sr's loss x 8 / step_tokens, Lightning's / 8, the engine's / 8 gives 1/8 of the
    gradient; with ``scale_wrt_gas=False`` (what ``W2SRDeepSpeedStrategy.backward`` passes) it is exact."""
    weight = torch.nn.Parameter(torch.ones(()))
    engine = FakeEngine(torch.nn.Identity(), torch.optim.SGD([weight], lr=1.0), {"gradient_accumulation_steps": 8})
    nll = [3.0, 1.0, 2.0, 5.0, 4.0, 1.0, 2.0, 2.0]  # per micro-batch, d(nll)/d(weight) = nll at weight 1
    step_tokens = 10
    for scale_wrt_gas, expected in ((True, sum(nll) / step_tokens / 8), (False, sum(nll) / step_tokens)):
        weight.grad = None
        for value in nll:
            module_loss = weight * value * 8 / step_tokens  # StudentModule.training_step
            engine.backward(module_loss / 8, scale_wrt_gas=scale_wrt_gas)  # Lightning's closure divides by 8
        assert float(weight.grad) == pytest.approx(expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not REAL_DEEPSPEED, reason='needs the extra: pip install "w2sr[deepspeed]"')
def test_zero2_accumulation_4_first_step_equals_single_device_on_gpu(tiny_model, short_window_traces, tmp_path):
    """On a GPU: ZeRO-2 with accumulation 4 moves the weights in its first step exactly as a single-device (DDP with
    one rank) run: with SGD at lr 1 the step is the gradient, so the gradient norms agree."""

    def first_step(strategy, root):
        torch.manual_seed(0)
        module = StudentModule(
            tiny_model,
            finetune="full",
            dtype="float32",
            loss="naive",
            optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
            export_dir=str(root / "export"),
        )
        data = TraceDataModule(
            str(short_window_traces), tokenizer=tiny_model, batch_size=2, val_fraction=0.0, cache_dir=None, seed=0
        )
        start = StudentModule(tiny_model, finetune="full", dtype="float32")
        start.configure_model()
        before = {k: v.float() for k, v in start.model.state_dict().items()}
        trainer = L.Trainer(
            accelerator="gpu",
            devices=1,
            strategy=strategy,
            precision="32-true",
            max_steps=1,
            accumulate_grad_batches=ACCUMULATE,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(root),
        )
        trainer.fit(module, data)
        after = {k: v.detach().float().cpu() for k, v in module.model.state_dict().items()}
        return torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before))

    single = first_step("auto", tmp_path / "single")
    zero2 = first_step("w2sr_deepspeed_stage_2", tmp_path / "zero2")
    assert float(single) > 0
    assert float(zero2) == pytest.approx(float(single), rel=1e-4)
