"""The cost record (issue 25.3): the FLOPs formula against hand-computed figures, derived fields, reading files, the
parameter count of a loaded model and of its checkpoint, and the clock's CPU time of child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from w2sr.records.cost import (
    FLOPS_FORMULA,
    CostTotal,
    StageClock,
    StageCost,
    checkpoint_parameter_count,
    model_flops,
    parameter_count,
    read_cost,
)
from w2sr.records.jsonl import InputError


def test_flops_are_2n_per_generated_and_6n_per_trained_token():
    # N = 1,000: 3 generated tokens cost 2 x 1,000 x 3 = 6,000; 5 trained tokens 6 x 1,000 x 5 = 30,000
    assert model_flops(1_000, 3, 0) == 6_000
    assert model_flops(1_000, 0, 5) == 30_000
    assert model_flops(1_000, 3, 5) == 36_000
    assert FLOPS_FORMULA == "2N per generated token + 6N per trained token"
    assert model_flops(None, 0, 0) == 0.0 and model_flops(None, 1, 0) is None  # unknown N: unknown, not 0


def test_the_record_derives_device_seconds_and_flops():
    cost = StageCost(stage="fit", wall_seconds=10.0, devices=4, tokens_trained=100, tokens_generated=7, parameters=50)
    assert cost.device_seconds == 40.0
    assert cost.flops == 2 * 50 * 7 + 6 * 50 * 100
    data = cost.to_dict()
    assert list(data)[:6] == ["stage", "wall_seconds", "devices", "device_kind", "device_seconds", "cpu_seconds"]
    assert data["flops_formula"] == FLOPS_FORMULA
    assert StageCost.from_dict(json.loads(json.dumps(data))) == cost


def test_reading_refuses_another_formula_and_unknown_stages(tmp_path):
    data = StageCost(stage="generate", wall_seconds=1.0, tokens_generated=3, parameters=10).to_dict()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"cost": {**data, "flops_formula": "6N per token"}}))
    with pytest.raises(InputError, match="not comparable"):
        read_cost(path)
    path.write_text(json.dumps({"cost": {**data, "stage": "train"}}))
    with pytest.raises(InputError, match="unknown stage"):
        read_cost(path)
    path.write_text(json.dumps({"other": 1}))
    assert read_cost(path, required=False) is None
    with pytest.raises(InputError, match="no cost record"):
        read_cost(path)


def test_totals_add_stages_and_an_unknown_flops_stays_unknown():
    parts = [
        StageCost(stage="generate", wall_seconds=2.0, devices=2, tokens_generated=10, parameters=5, cpu_seconds=3.0),
        StageCost(stage="verify", wall_seconds=1.0, cpu_seconds=4.0),
        StageCost(stage="fit", wall_seconds=3.0, tokens_trained=20, parameters=7, cpu_seconds=1.0),
    ]
    total = CostTotal.of(parts)
    assert total.stages == ["generate", "verify", "fit"]
    assert (total.wall_seconds, total.device_seconds, total.cpu_seconds) == (6.0, 8.0, 8.0)
    assert total.flops == 2 * 5 * 10 + 6 * 7 * 20
    assert CostTotal.of([*parts, StageCost(stage="fit", tokens_trained=1, parameters=None)]).flops is None


def test_parameter_count_of_the_loaded_model_and_of_its_checkpoint(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    expected = model.num_parameters()  # transformers' own count, tied weights once
    assert parameter_count(model) == expected
    assert checkpoint_parameter_count(tiny_model) == expected


def test_parameter_count_unpacks_4bit_and_zero3_weights():
    import torch

    class Quant:
        shape = torch.Size([64, 32])

    packed = torch.nn.Parameter(torch.zeros(1024, 1, dtype=torch.uint8), requires_grad=False)
    packed.quant_state = Quant()  # bitsandbytes Params4bit: 2 weights per byte
    partitioned = torch.nn.Parameter(torch.zeros(0))
    partitioned.ds_numel = 500  # DeepSpeed ZeRO-3: this rank holds none of it
    module = torch.nn.Module()
    module.a, module.b, module.c = packed, partitioned, torch.nn.Parameter(torch.zeros(3))
    assert parameter_count(module) == 64 * 32 + 500 + 3


BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="live child processes are read from /proc")
def test_the_clock_counts_child_processes_reaped_alive_and_not_excluded_ones():
    clock = StageClock()
    subprocess.run([sys.executable, "-c", BURN.format(s=0.6)], check=True)  # reaped: in RUSAGE_CHILDREN
    alive = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.6) + "time.sleep(60)"])
    other = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.5) + "time.sleep(60)"])
    try:
        time.sleep(0.2)
        deadline = time.time() + 60
        while time.time() < deadline and (_cpu(alive.pid) < 0.6 or _cpu(other.pid) < 1.5):
            time.sleep(0.1)
        clock.exclude = {other.pid}  # e.g. another rank of the run: it counts itself
        seconds = clock.cpu_seconds()
        assert 1.2 <= seconds < 1.2 + 0.8, seconds  # both burns, not the excluded one's 1.5 s (+ start-ups, test)
    finally:
        for proc in (alive, other):
            proc.kill()
            proc.wait()


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_phases_add_wall_seconds_per_name():
    clock = StageClock()
    for _ in range(2):
        with clock.phase("rollout"):
            time.sleep(0.05)
    assert 0.1 <= clock.phases["rollout"] < 1.0 and list(clock.phases) == ["rollout"]
