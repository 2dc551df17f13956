"""The fit's cost.json (issue 25.3) under DDP: 2 gloo ranks on the CPU record devices = 2, device-seconds = wall x 2,
the target tokens of every rank summed (each trace's targets once per epoch), FLOPs of those tokens and N; and the
meter's API for a module that reports its own tokens and phases (the RL fit). On a GPU (marked ``gpu``, skipped
without CUDA; not yet run on one): the CUDA device and peak memory, N of 4-bit weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import make_traces

from w2sr.records.cost import FLOPS_FORMULA


@pytest.mark.slow  # two processes, each loading torch + Lightning
def test_ddp_two_ranks_record_two_devices_and_the_tokens_of_both(tmp_path, tiny_model, tiny_tokenizer):
    from w2sr.records.jsonl import write_jsonl
    from w2sr.training.datamodule import tokenize_trace

    traces = make_traces(8)  # 8 traces, 2 per micro-batch, 2 ranks: 2 steps, no example repeated to even the ranks
    train = tmp_path / "train.jsonl"
    write_jsonl(train, (t.to_dict() for t in traces))
    run = tmp_path / "run"
    args = [
        "fit", "--model.model_name_or_path", tiny_model, "--model.lora.r", "4", "--data.train_file", str(train),
        "--data.val_fraction", "0", "--data.batch_size", "2", "--data.cache_dir", "null", "--trainer.max_epochs", "1",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
    ]  # fmt: skip
    env = {**os.environ, "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "w2sr.cli", *args], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    cost = json.loads((run / "cost.json").read_text())["cost"]
    assert cost["stage"] == "fit" and cost["devices"] == 2 and cost["device_kind"] == "cpu"
    assert cost["device_seconds"] == pytest.approx(2 * cost["wall_seconds"], rel=1e-12)
    targets = [tokenize_trace(tiny_tokenizer, t).num_targets for t in traces]
    assert cost["tokens_trained"] == sum(targets)  # both ranks' halves, not rank 0's alone
    assert cost["flops"] == 6 * cost["parameters"] * sum(targets) and cost["flops_formula"] == FLOPS_FORMULA
    assert cost["cpu_seconds"] > 0 and cost["peak_memory_bytes"] > 0 and cost["segments"] == 1


class _Trainer:
    """Just what CostMeter reads from a single-process trainer."""

    def __init__(self, root):
        import torch

        from w2sr.runtime.cost import CostMeter

        self.strategy = type("S", (), {"root_device": torch.device("cpu"), "launcher": None})()
        self.world_size, self.is_global_zero, self.default_root_dir = 1, True, str(root)
        self.meter = CostMeter(stage="rl", count_batches=False)
        self.callbacks = [self.meter]


def test_a_module_reports_its_own_tokens_and_phases(tmp_path):
    import torch

    from w2sr.records.cost import read_cost
    from w2sr.runtime.cost import cost_meter

    trainer = _Trainer(tmp_path)
    module = torch.nn.Linear(10, 10)  # N = 110
    meter = cost_meter(trainer)
    meter.on_fit_start(trainer, module)
    with meter.phase("rollout"):
        meter.add_tokens(generated=40)
    with meter.phase("training"):
        meter.add_tokens(trained=30)
    meter.on_train_batch_end(trainer, module, None, {"num_targets": 5}, 0)  # count_batches false: not counted
    meter.on_fit_end(trainer, module)
    cost = read_cost(tmp_path)
    assert (cost.stage, cost.tokens_generated, cost.tokens_trained, cost.parameters) == ("rl", 40, 30, 110)
    assert cost.flops == 2 * 110 * 40 + 6 * 110 * 30
    assert sorted(cost.phases) == ["rollout", "training"] and cost.wall_seconds >= sum(cost.phases.values())

    state = meter.state_dict()  # a resumed fit continues from the checkpoint's figures
    again = _Trainer(tmp_path)
    again.meter.load_state_dict(state)
    again.meter.on_fit_start(again, module)
    again.meter.add_tokens(generated=2)
    again.meter.on_fit_end(again, module)
    resumed = read_cost(tmp_path)
    assert (resumed.tokens_generated, resumed.tokens_trained, resumed.segments) == (42, 30, 2)
    assert resumed.wall_seconds >= cost.wall_seconds and set(resumed.phases) == {"rollout", "training"}


@pytest.mark.gpu
@pytest.mark.parametrize("quantized", [False, True])
def test_gpu_parameter_count_of_a_4bit_layer_is_its_unpacked_shape(quantized):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (bitsandbytes 4-bit weights)")
    import bitsandbytes as bnb

    from w2sr.records.cost import parameter_count

    layer = (bnb.nn.Linear4bit(64, 32, quant_type="nf4") if quantized else torch.nn.Linear(64, 32)).cuda()
    assert parameter_count(layer) == 64 * 32 + 32


@pytest.mark.slow
@pytest.mark.gpu
def test_gpu_fit_records_the_cuda_device_and_its_peak_memory(tmp_path, tiny_model, traces_file, capsys):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from conftest import run_cli

    run = tmp_path / "run"
    code, out = run_cli(
        [
            "fit", "--model.model_name_or_path", tiny_model, "--model.lora.r", "4", "--data.train_file",
            str(traces_file), "--data.batch_size", "2", "--data.cache_dir", "null", "--trainer.max_steps", "2",
            "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.default_root_dir", str(run),
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, out[-2000:]
    cost = json.loads((run / "cost.json").read_text())["cost"]
    assert cost["device_kind"] == f"cuda:{torch.cuda.get_device_name()}" and cost["devices"] == 1
    assert 0 < cost["peak_memory_bytes"] <= torch.cuda.max_memory_allocated()  # CUDA memory, not the host's RSS
