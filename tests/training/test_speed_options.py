"""The training step's speed options and host-sync-free paths (issue 19): ``model.compile``, ``model.liger_kernels``,
``model.fused_optimizer``, the data loader's ``num_workers`` / ``pin_memory`` defaults, logging without a host sync
per step, the chunked loss with fixed shapes and no boolean compaction, ``_eval_step`` without ``int(tokens)``, and
the ``benchmarks/gpu_throughput.py --tiny`` smoke run. Run: ``pytest tests/training/test_speed_options.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from w2sr.records.jsonl import InputError
from w2sr.training import losses, speed
from w2sr.training.datamodule import TraceDataModule
from w2sr.training.module import StudentModule

ROOT = Path(__file__).resolve().parents[2]


class HostSyncs(TorchDispatchMode):
    """Records the ops that read a device value back to the host or size an output by data (nonzero)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = str(func.overloadpacket.__name__)
        bool_index = name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if len(args) > 1 else [])
            if i is not None
        )
        if name in ("_local_scalar_dense", "nonzero", "masked_select") or bool_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _batch(tokenizer, n: int = 3) -> dict:
    from conftest import make_traces

    from w2sr.training.batching import BatchCollator, MicroBatch
    from w2sr.training.datamodule import tokenize_trace

    examples = [tokenize_trace(tokenizer, t) for t in make_traces(n)]
    meta = MicroBatch(rows=tuple((i,) for i in range(n)), step_tokens=1, step_end=True)
    return BatchCollator(tokenizer.pad_token_id)(([[e] for e in examples], meta))


def _model(tiny_model: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)


def test_chunked_loss_has_no_host_sync_and_fixed_chunk_shapes(tiny_model, tiny_tokenizer, monkeypatch):
    model, batch = _model(tiny_model), _batch(tiny_tokenizer)
    naive, tokens = losses.token_nll_sum(model, batch, "naive")
    shapes = []
    real = losses._chunk_nll
    monkeypatch.setattr(
        losses, "_chunk_nll", lambda head, cap, h, t: shapes.append(tuple(h.shape)) or real(head, cap, h, t)
    )
    hidden, head, cap = losses.decoder_hidden(model, batch)  # the decoder may sync (its masks): the loss is checked
    monkeypatch.setattr(losses, "decoder_hidden", lambda m, b: (hidden, head, cap))
    with HostSyncs() as syncs:
        chunked = losses.chunked_nll_sum(model, batch, chunk_size=16)
    assert syncs.seen == []  # before: hidden[mask] (a boolean index: nonzero, a sync and a data-dependent shape)
    assert len(set(shapes)) == 1 and shapes[0][0] == 16  # every chunk the same shape; the last filled with ignored rows
    assert batch["num_targets"] == int(tokens) and torch.allclose(chunked, naive, rtol=1e-5)


def test_targets_without_a_host_count_still_match(tiny_tokenizer):
    batch = _batch(tiny_tokenizer, 2)
    hidden = torch.randn(*batch["input_ids"].shape, 4)
    h, t = losses._targets(hidden, batch["labels"])
    mask = batch["labels"][:, 1:] != -100
    assert torch.equal(h, hidden[:, :-1][mask]) and torch.equal(t, batch["labels"][:, 1:][mask])


def test_eval_step_has_no_host_sync_and_skips_empty_batches(tiny_model, tiny_tokenizer, monkeypatch):
    module = StudentModule(tiny_model, loss="chunked")
    module.configure_model()
    module.loss_impl = "chunked"
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    batch = _batch(tiny_tokenizer, 2)
    with torch.no_grad():
        hidden, head, cap = losses.decoder_hidden(module.model, batch)
    monkeypatch.setattr(losses, "decoder_hidden", lambda m, b: (hidden, head, cap))
    with torch.no_grad(), HostSyncs() as syncs:
        module._eval_step(batch, module.val_loss, "val/loss")
    assert syncs.seen == []  # before: int(tokens) and MeanMetric's NaN check, a sync per validation batch
    empty = {**batch, "labels": torch.full_like(batch["labels"], -100), "num_targets": 0}
    with torch.no_grad():
        module._eval_step(empty, module.val_loss, "val/loss")  # weighs nothing
    nll, tokens = losses.token_nll_sum(module.model, batch, "chunked")
    assert torch.allclose(module.val_loss.compute(), nll / tokens, rtol=1e-5)


def _fit(module, traces_file, tiny_model, root, steps=6, every=3, callbacks=()):
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, batch_size=4, val_fraction=0.0, cache_dir=None)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=True,
        enable_model_summary=False,
        log_every_n_steps=every,
        accumulate_grad_batches=2,
        default_root_dir=str(root),
        callbacks=list(callbacks),
    )
    trainer.fit(module, dm)
    return trainer, dm


def test_train_loss_is_logged_every_n_steps_from_the_host(traces_file, tiny_model, tmp_path, monkeypatch):
    module = StudentModule(tiny_model, loss="chunked", export_dir=str(tmp_path / "ex"))
    logged = []
    real = module.log
    monkeypatch.setattr(
        module,
        "log",
        lambda name, value, **k: (
            logged.append((name, module.trainer.global_step + 1, value.device.type)),
            real(name, value, **k),
        ),
    )
    trainer, dm = _fit(module, traces_file, tiny_model, tmp_path, steps=4)  # 5 steps an epoch: stops at 4
    # before: train/loss logged (sync_dist, progress bar) every step and train/tokens every micro-batch
    assert [(s, d) for n, s, d in logged if n == "train/loss"] == [(3, "cpu"), (4, "cpu")]
    assert len([1 for n, *_ in logged if n == "train/tokens"]) == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    planned = sum(b["num_targets"] for b, _ in zip(dm.train_dataloader(), range(8)))
    assert float(trainer.callback_metrics["train/tokens"]) == planned


def test_loader_defaults_on_the_cpu(traces_file, tiny_model):
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model)
    assert dm.loader_options() == {"num_workers": 0, "pin_memory": False}  # no CUDA: workers would compete


def test_fused_adamw_and_its_limits():
    p = [torch.nn.Parameter(torch.randn(4))]
    fused, done = speed.fuse_adamw(torch.optim.AdamW(p, lr=3e-4, weight_decay=0.1))
    assert fused.defaults["fused"] is True and fused.param_groups[0]["lr"] == 3e-4 and "fused" in done
    for chosen in ({"foreach": False}, {"fused": False}):
        same = torch.optim.AdamW(p, **chosen)
        assert speed.fuse_adamw(same)[0] is same  # the user's own choice stands
    sgd = torch.optim.SGD(p, lr=0.1)
    assert speed.fuse_adamw(sgd)[0] is sgd


def test_compile_and_fused_optimizer_in_fit(traces_file, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")  # the wiring; inductor's C++ build is slow here
    module = StudentModule(
        tiny_model, loss="chunked", compile=True, fused_optimizer=True, export_dir=str(tmp_path / "ex")
    )
    trainer, _ = _fit(module, traces_file, tiny_model, tmp_path, steps=2, every=1)
    layers = speed.decoder_layers(module.model)
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert trainer.optimizers[0].defaults["fused"] is True
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_compiled_layers_give_the_same_loss(tiny_model, tiny_tokenizer, monkeypatch):
    batch = _batch(tiny_tokenizer, 2)
    eager, compiled = _model(tiny_model), _model(tiny_model)
    assert speed.compile_decoder_layers(compiled, backend="aot_eager") == len(speed.decoder_layers(compiled))
    a, _ = losses.token_nll_sum(eager, batch, "chunked")
    b, _ = losses.token_nll_sum(compiled, batch, "chunked")
    a.backward(), b.backward()
    assert torch.allclose(a, b, rtol=1e-5)
    ga = eager.get_output_embeddings().weight.grad
    assert torch.allclose(ga, compiled.get_output_embeddings().weight.grad, atol=1e-6)


def test_compile_refusals_are_one_clear_line():
    with pytest.raises(InputError, match="DeepSpeed"):
        speed.check_compile("W2SRDeepSpeedStrategy", "cuda")
    with pytest.raises(InputError, match="decoder layers"):
        speed.compile_decoder_layers(torch.nn.Linear(2, 2))


@pytest.mark.skipif(speed.liger_available(), reason="liger-kernel is installed")
def test_liger_kernels_without_liger_exits_2(tiny_model, traces_file, tmp_path):
    with pytest.raises(InputError, match="liger-kernel"):
        StudentModule(tiny_model, liger_kernels=True)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "w2sr.cli",
            "fit",
            "--model.model_name_or_path",
            tiny_model,
            "--model.liger_kernels",
            "true",
            "--data.train_file",
            str(traces_file),
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "model.liger_kernels needs liger-kernel" in out.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_liger_kernels_and_compile_on_gpu(tiny_model, tiny_tokenizer):
    pytest.importorskip("liger_kernel")
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in _batch(tiny_tokenizer, 2).items()}
    plain = _model(tiny_model).cuda()
    fast = _model(tiny_model).cuda()
    assert speed.apply_liger_kernels(fast, "cuda") == fast.config.model_type
    speed.compile_decoder_layers(fast)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a, _ = losses.token_nll_sum(plain, batch, "chunked")
        b, _ = losses.token_nll_sum(fast, batch, "chunked")
    b.backward()
    assert torch.allclose(a, b, rtol=2e-2)
    assert any("Liger" in type(m).__name__ for m in fast.modules())


@pytest.mark.slow
def test_gpu_throughput_tiny_smoke(tmp_path):
    # the runners the GPU table compares w2sr against (TRL's row is covered by tests/training/test_reference_trl.py);
    # the whole tiny plan takes minutes on 2 cores
    only = ",".join(
        f"lora-0.5b:{data}:{runner}"
        for data, runner in (
            ("fixed", "w2sr-before"),
            ("fixed", "w2sr-after"),
            ("fixed", "bare"),
            ("mix", "w2sr-after"),
        )
    )
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_throughput.py"),
            "--tiny",
            "--only",
            only,
            "--out_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"},
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    result = json.loads((tmp_path / "gpu_throughput.json").read_text())
    runs = {r["name"]: r for r in result["runs"]}
    assert {"w2sr-before", "w2sr-after", "bare"} <= {r["runner"] for r in runs.values()}
    assert len(runs) == 4 and all(r.get("tokens_per_s", 0) > 0 for r in runs.values()), runs
    assert result["device"] and result["versions"]["torch"] and result["command"]


@pytest.mark.parametrize("steps, every, rows", [(3, 50, [2]), (4, 2, [1, 3]), (3, 2, [1, 2])])
def test_train_loss_reaches_metrics_csv_even_when_the_run_is_shorter_than_the_log_interval(
    traces_file, tiny_model, tmp_path, steps, every, rows
):
    """Issue 28.3: a 3-step run with log_every_n_steps 50 had no train/loss column in metrics.csv; the run's last
    step is written once (not twice when it is also a log step), at Lightning's step numbers."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    module = StudentModule(tiny_model, loss="chunked", export_dir=str(tmp_path / "ex"))
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, batch_size=4, val_fraction=0.0, cache_dir=None)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=CSVLogger(str(tmp_path), name="log"),
        default_root_dir=str(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=every,
    )
    trainer.fit(module, dm)
    logged = [r for r in csv.DictReader((tmp_path / "log" / "version_0" / "metrics.csv").open()) if r["train/loss"]]
    assert [int(r["step"]) for r in logged] == rows
    assert float(logged[-1]["train/loss"]) == pytest.approx(float(trainer.callback_metrics["train/loss"]))
