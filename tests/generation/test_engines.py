"""Several engines in one command (issue 26, item 2), on toy engines: each engine process pinned to its own CPU
cores, the problems split and merged back in problem order (equal to one engine's output), an engine that fails to
start stops the others (exit 2 for bad input), and no engine process outlives a SIGKILL or SIGTERM of the command.
The real vLLM engines: ``tests/generation/test_vllm_engines.py`` (``make test-vllm``)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_probe import ToyEngine, jobs

from w2sr.generation.engines import EngineSlot, plan_engines, run_jobs
from w2sr.records.jsonl import InputError, read_jsonl

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CPUS = sorted(os.sched_getaffinity(0))
two_cores = pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 CPU cores")


def helper_processes(pid: int) -> list:
    import psutil

    return [p for p in psutil.Process(pid).children(recursive=True) if p.name() == "sleep"]


def running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def probes(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("engine-*.json"))]


def test_plan_splits_cores_and_gpus_and_refuses_too_few(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6})
    slots = plan_engines(2, 1)
    assert [s.cpus for s in slots] == [[0, 1, 2, 3], [4, 5, 6]]
    assert slots[1].environment() == {"VLLM_CPU_OMP_THREADS_BIND": "4,5,6"}
    assert plan_engines(2, 2)[0].environment() == {"VLLM_CPU_OMP_THREADS_BIND": "0,1|2,3"}  # one list per TP worker
    with pytest.raises(InputError, match="need 8 CPU cores"):
        plan_engines(4, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    slots = plan_engines(2, 2, gpu=True)
    assert [s.environment() for s in slots] == [{"CUDA_VISIBLE_DEVICES": "3,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    assert slots[1].describe() == {"rank": 1, "gpus": ["6", "7"]}
    with pytest.raises(InputError, match="need 6 GPUs; 4 are visible"):
        plan_engines(3, 2, gpu=True)
    assert EngineSlot(0, 1, cpus=[0], cpu_groups=[[0]]).describe() == {"rank": 0, "cpus": [0]}


@pytest.mark.slow  # two spawned engine processes import w2sr and transformers (~10 s each on a busy machine)
@two_cores
def test_two_pinned_engines_equal_one_engine(tiny_model, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    (tmp_path / "p1").mkdir(), (tmp_path / "p2").mkdir()
    [card_one] = run_jobs(jobs(str(one), 7), ToyEngine(tiny_model, str(tmp_path / "p1")))
    [card_two] = run_jobs(jobs(str(two), 7), ToyEngine(tiny_model, str(tmp_path / "p2")), engines=2)
    assert read_jsonl(two) == read_jsonl(one) and len(read_jsonl(one)) == 14  # problem order, every sample
    assert not list(tmp_path.glob("*.part.jsonl"))
    assert card_two["ranks"] == 2 and card_two["samples_generated"] == 14 == card_one["samples_generated"]
    halves = [CPUS[: (len(CPUS) + 1) // 2], CPUS[(len(CPUS) + 1) // 2 :]]
    assert card_two["engines"] == [{"rank": 0, "cpus": halves[0]}, {"rank": 1, "cpus": halves[1]}]
    seen = probes(tmp_path / "p2")
    assert len({p["pid"] for p in seen}) == 2 and os.getpid() not in {p["pid"] for p in seen}
    assert sorted(p["cpus"] for p in seen) == halves  # each engine process runs on its own cores only
    assert sorted(p["omp_bind"] for p in seen) == sorted(",".join(map(str, h)) for h in halves)
    assert {p["parent_env"] for p in seen} == {str(os.getpid())}
    assert [p["cpus"] for p in probes(tmp_path / "p1")] == [CPUS]  # one engine: this process, all its cores
    assert not multiprocessing.active_children()


@pytest.mark.slow
@two_cores
def test_an_engine_that_fails_to_start_stops_the_others(tiny_model, tmp_path):
    factory = ToyEngine(tiny_model, str(tmp_path), delay=1.0, fail_on_cpu=CPUS[-1])
    started = time.monotonic()
    with pytest.raises(InputError, match="field 'vllm.max_model_len': this engine cannot start"):
        run_jobs(jobs(str(tmp_path / "out.jsonl"), 40), factory, engines=2)
    assert time.monotonic() - started < 35  # the healthy engine (40 problems x 1 s) was stopped, not waited for
    assert not multiprocessing.active_children()


@pytest.mark.slow
@two_cores
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_no_engine_survives_the_command(tiny_model, tmp_path, signum):
    import psutil

    output = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "engine_probe.py"), tiny_model, str(tmp_path), str(output)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if sum(p.read_text().count("\n") for p in tmp_path.glob("*.part.jsonl")) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    deadline = time.time() + 60
    while time.time() < deadline and len(helpers := helper_processes(proc.pid)) < 2:
        time.sleep(0.1)
    assert len(helpers) == 2  # each engine's helper: killed only by the engine process's group reaper
    engines = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signum)
    proc.wait(timeout=60)
    proc.stderr.close()
    _, alive = psutil.wait_procs(engines, timeout=15)  # they would run ~100 s more
    alive = [p for p in alive if running(p)]  # a zombie has exited (init reaps it when it gets to it)
    for leftover in alive:
        leftover.kill()
    assert not alive, f"engine processes left after {signal.Signals(signum).name}: {[p.pid for p in alive]}"
    assert proc.returncode == (128 + signal.SIGTERM if signum == signal.SIGTERM else -signal.SIGKILL)
