"""Two REAL vLLM CPU engines in one command (issue 26, items 1 and 2; ``make test-vllm``): ``--vllm.data_parallel_size
2`` starts two engine processes, each pinned to its own core (its vLLM engine core and worker with it), which split
the problems; a SIGTERM (exit 143, saying how to resume) or SIGKILL of ``w2sr generate`` / ``w2sr evaluate`` leaves
no process behind, and the run resumed on one engine gives exactly one engine's uninterrupted output (sampled, seeded
per sample): the parts both engines wrote are merged in problem order. One in-process engine serves the reference and
resumed runs; each killed run starts its own two. Skipped where vLLM is not installed (see test_vllm_real.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import skip_without_vllm

pytestmark = pytest.mark.vllm
skip_without_vllm()
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")  # vLLM's own CPU CI setting: no inductor, no warm-up

from w2sr.cli import main  # noqa: E402
from w2sr.generation import backends  # noqa: E402
from w2sr.generation.store import read_records  # noqa: E402
from w2sr.generation.vllm import VLLMBackend, VLLMOptions  # noqa: E402
from w2sr.records.jsonl import read_jsonl  # noqa: E402
from w2sr.toy import build_tiny_model, write_toy_data  # noqa: E402

MAX_MODEL_LEN = 192
PROBLEMS = 24
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
SAMPLED = ["--sampling.n", "2", "--sampling.temperature", "1.0", "--sampling.max_new_tokens", "40"]
SAMPLED += ["--sampling.seed", "11"]
ENGINE = ["--vllm.enforce_eager", "true", "--vllm.max_model_len", str(MAX_MODEL_LEN)]
ONE_AT_A_TIME = ["--vllm.max_num_seqs", "1"]  # killed runs: samples trickle in, so both engines have work left
CPUS = sorted(os.sched_getaffinity(0))
if len(CPUS) < 2:
    pytest.skip("two engines need two CPU cores", allow_module_level=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_tiny_model(
        str(tmp_path_factory.mktemp("vllm-engines") / "tiny"),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        initializer_range=0.2,
    )


@pytest.fixture(scope="module")
def engine(model_dir):
    """One engine in this process (the reference, and the resumed runs), built as the CLI builds it."""
    from w2sr.training.module import StudentModule

    module = StudentModule(model_name_or_path=model_dir)
    backend = VLLMBackend.from_module(
        module, module.load_tokenizer(), VLLMOptions(enforce_eager=True, max_model_len=MAX_MODEL_LEN)
    )
    yield backend
    backend.shutdown()


@pytest.fixture
def one_engine(monkeypatch, engine):
    """``--backend vllm`` in this process uses the module's engine."""

    def make_backend(model, kind, device, vllm=None):
        tokenizer = model.load_tokenizer()
        return VLLMBackend(engine.llm, tokenizer, name=model.label, stops=engine.stops), tokenizer

    monkeypatch.setattr(backends, "make_backend", make_backend)


def cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("w2sr")), *args]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def engines_seen(proc: subprocess.Popen, seen: dict[int, tuple[set[int], list[set[int]]]]) -> None:
    """Record the cores of each engine process of ``proc`` (its children but multiprocessing's resource tracker)
    running its vLLM engine (an engine core and a worker below it), and of the processes below it."""
    import psutil

    try:
        for rank in psutil.Process(proc.pid).children():
            below = rank.children(recursive=True)
            if "resource_tracker" not in " ".join(rank.cmdline()) and len(below) >= 2:
                seen[rank.pid] = (set(rank.cpu_affinity()), [set(p.cpu_affinity()) for p in below])
    except psutil.Error:
        pass


def wait_for_samples(proc: subprocess.Popen, files, count: int = 2) -> None:
    """Until ``count`` samples are in the part files (the first engine is generating: under load the second may
    start minutes later)."""
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if sum(p.read_text().count("\n") for p in files()) >= count:
            return
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped: " + proc.stderr.read().decode()[-3000:]
    raise AssertionError("no samples within 600 s")


def check_pinning(seen: dict[int, tuple[set[int], list[set[int]]]]) -> None:
    """Each engine process and every process vLLM started under it ran on that engine's own core(s) only."""
    cores = [mine for mine, _ in seen.values()]
    assert len(cores) == 2 and not cores[0] & cores[1] and cores[0] | cores[1] <= set(CPUS), cores
    assert all(below <= mine for mine, belows in seen.values() for below in belows), seen


def everything_under(proc: subprocess.Popen) -> list:
    import psutil

    return psutil.Process(proc.pid).children(recursive=True)


def assert_all_gone(processes: list, how: str) -> None:
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=60)
    alive = [p for p in alive if running(p)]  # a zombie has exited (init reaps it when it gets to it)
    for leftover in alive:
        leftover.kill()
    assert not alive, f"processes left after {how}: {[(p.pid, p.name()) for p in alive]}"


def running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_generate_on_two_engines_sigterm_resume_and_equal_one_engine(one_engine, model_dir, tmp_path):
    """Stopped by SIGTERM while generating (exit 143, no process left), resumed on two engines (each on its own
    core, its vLLM processes with it): the output equals one engine's, record for record."""
    write_toy_data(str(tmp_path / "toy"), n_train=2, n_test=PROBLEMS)
    problems, output = tmp_path / "toy" / "test.jsonl", tmp_path / "out.jsonl"
    args = ["generate", "--model.model_name_or_path", model_dir, "--backend", "vllm", "--problems", str(problems)]
    two = cli(*args, "--output", str(output), "--vllm.data_parallel_size", "2") + ENGINE + SAMPLED + QUIET
    proc = start(two + ONE_AT_A_TIME)
    wait_for_samples(proc, lambda: tmp_path.glob("out.jsonl.rank*of2.part.jsonl"))
    processes = everything_under(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in proc.stderr.read().decode()
    proc.stderr.close()
    assert_all_gone(processes, "SIGTERM of w2sr generate")
    parts = {(r["id"], r["sample"]) for p in tmp_path.glob("out.jsonl.rank*of2.part.jsonl") for r in read_records(p)}
    assert 2 <= len(parts) < 2 * PROBLEMS

    proc, seen = start(two + ["--resume", "true"]), {}
    while proc.poll() is None:
        engines_seen(proc, seen)
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
    proc.stderr.close()
    check_pinning(seen)
    card = json.loads(Path(f"{output}.card.json").read_text())
    assert card["engines"] == [{"rank": r, "cpus": sorted(c)} for r, c in enumerate(sorted(seen_cores(seen)))]
    assert card["resumed_samples"] == len(parts) and card["samples_generated"] == 2 * PROBLEMS - len(parts)
    main(args + ["--output", str(tmp_path / "reference.jsonl")] + SAMPLED + QUIET)  # one engine
    resumed, reference = read_jsonl(output), read_jsonl(tmp_path / "reference.jsonl")
    assert len(reference) == 2 * PROBLEMS and len({r["completion"] for r in reference}) > PROBLEMS
    assert resumed == reference  # same records, same problem order
    assert not list(tmp_path.glob("*.part.jsonl"))


def seen_cores(seen: dict[int, tuple[set[int], list[set[int]]]]) -> list[list[int]]:
    return [sorted(mine) for mine, _ in seen.values()]


def test_evaluate_on_two_engines_sigkill_then_resume_equals_one_engine(one_engine, model_dir, tmp_path):
    """Killed (SIGKILL) while its engines generate: no process left; resumed on one engine, results.json and
    predictions.jsonl equal an uninterrupted one-engine run's."""
    write_toy_data(str(tmp_path / "toy"), n_train=2, n_test=PROBLEMS)
    problems, out = tmp_path / "toy" / "test.jsonl", tmp_path / "eval"
    args = ["evaluate", "--model.model_name_or_path", model_dir, "--backend", "vllm", "--problems", str(problems)]
    proc = start(
        cli(*args, "--output_dir", str(out), "--vllm.data_parallel_size", "2")
        + ENGINE
        + SAMPLED
        + QUIET
        + ONE_AT_A_TIME
    )
    wait_for_samples(proc, lambda: (out / "generations").glob("*.part.jsonl"))
    processes = everything_under(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert_all_gone(processes, "SIGKILL of w2sr evaluate")
    kept = sum(len(read_records(p)) for p in (out / "generations").glob("*.part.jsonl"))
    assert 2 <= kept < 2 * PROBLEMS and not (out / "results.json").exists()

    main(args + ["--output_dir", str(out), "--resume", "true"] + SAMPLED + QUIET)
    main(args + ["--output_dir", str(tmp_path / "reference")] + SAMPLED + QUIET)
    resumed, reference = (json.loads((d / "results.json").read_text()) for d in (out, tmp_path / "reference"))
    assert resumed.pop("timing_s") and reference.pop("timing_s")
    assert resumed == reference
    assert read_jsonl(out / "predictions.jsonl") == read_jsonl(tmp_path / "reference" / "predictions.jsonl")
    card = json.loads((out / "predictions.jsonl.card.json").read_text())
    assert (card["resumed_samples"], card["samples"]) == (kept, 2 * PROBLEMS - kept)
    assert not (out / "generations").exists()
