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
from w2sr.generation.vllm import VLLMBackend, VLLMOptions  # noqa: E402
from w2sr.records.jsonl import read_jsonl  # noqa: E402
from w2sr.toy import build_tiny_model, write_toy_data  # noqa: E402

MAX_MODEL_LEN = 192
PROBLEMS = 40  # 40 samples per engine, one sequence at a time: neither engine is done before both are checked
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
SAMPLED = ["--sampling.n", "2", "--sampling.temperature", "1.0", "--sampling.max_new_tokens", "40"]
SAMPLED += ["--sampling.seed", "11"]
ENGINE = ["--vllm.enforce_eager", "true", "--vllm.max_model_len", str(MAX_MODEL_LEN)]
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


def watch_engines(proc: subprocess.Popen, files) -> dict[int, tuple[set[int], list[set[int]]]]:
    """Watch the command until both engine processes (its children but multiprocessing's resource tracker) have been
    seen running their vLLM engine (an engine core and a worker below each) and samples are being written; return
    each engine process's cores and those of the processes below it, as seen (under load one engine may start
    minutes after the other, and finish first)."""
    import psutil

    seen: dict[int, tuple[set[int], list[set[int]]]] = {}
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            for rank in psutil.Process(proc.pid).children():
                below = rank.children(recursive=True)
                if "resource_tracker" not in " ".join(rank.cmdline()) and len(below) >= 2:
                    seen[rank.pid] = (set(rank.cpu_affinity()), [set(p.cpu_affinity()) for p in below])
        except psutil.Error:
            pass
        if len(seen) == 2 and sum(p.read_text().count("\n") for p in files()) >= 2:
            return seen
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped: " + proc.stderr.read().decode()[-3000:]
    raise AssertionError(f"the two engines were not seen generating within 600 s: {seen}")


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
    for leftover in alive:
        leftover.kill()
    assert not alive, f"processes left after {how}: {[(p.pid, p.name()) for p in alive]}"


def test_generate_on_two_engines_sigterm_then_resume_equals_one_engine(one_engine, model_dir, tmp_path):
    write_toy_data(str(tmp_path / "toy"), n_train=2, n_test=PROBLEMS)
    problems, output = tmp_path / "toy" / "test.jsonl", tmp_path / "out.jsonl"
    args = ["generate", "--model.model_name_or_path", model_dir, "--backend", "vllm", "--problems", str(problems)]
    proc = start(
        cli(*args, "--output", str(output), "--vllm.data_parallel_size", "2", "--vllm.max_num_seqs", "1")
        + ENGINE
        + SAMPLED
        + QUIET,
    )
    check_pinning(watch_engines(proc, lambda: tmp_path.glob("out.jsonl.rank*of2.part.jsonl")))
    processes = everything_under(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in proc.stderr.read().decode()
    proc.stderr.close()
    assert_all_gone(processes, "SIGTERM of w2sr generate")
    parts = {(r["id"], r["sample"]): r for p in tmp_path.glob("out.jsonl.rank*of2.part.jsonl") for r in read_jsonl(p)}
    assert 2 <= len(parts) < 2 * PROBLEMS

    main(args + ["--output", str(output), "--resume", "true"] + SAMPLED + QUIET)  # one engine finishes the run
    main(args + ["--output", str(tmp_path / "reference.jsonl")] + SAMPLED + QUIET)
    resumed, reference = read_jsonl(output), read_jsonl(tmp_path / "reference.jsonl")
    assert len(reference) == 2 * PROBLEMS and len({r["completion"] for r in reference}) > PROBLEMS
    assert resumed == reference  # same records, same problem order
    assert all(parts[key] == next(r for r in reference if (r["id"], r["sample"]) == key) for key in parts)
    assert not list(tmp_path.glob("*.part.jsonl"))


def test_evaluate_on_two_engines_sigkill_then_resume_equals_one_engine(one_engine, model_dir, tmp_path):
    write_toy_data(str(tmp_path / "toy"), n_train=2, n_test=PROBLEMS)
    problems, out = tmp_path / "toy" / "test.jsonl", tmp_path / "eval"
    args = ["evaluate", "--model.model_name_or_path", model_dir, "--backend", "vllm", "--problems", str(problems)]
    proc = start(
        cli(*args, "--output_dir", str(out), "--vllm.data_parallel_size", "2", "--vllm.max_num_seqs", "1")
        + ENGINE
        + SAMPLED
        + QUIET,
    )
    check_pinning(watch_engines(proc, lambda: (out / "generations").glob("*.part.jsonl")))
    processes = everything_under(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert_all_gone(processes, "SIGKILL of w2sr evaluate")
    assert not (out / "results.json").exists()

    main(args + ["--output_dir", str(out), "--resume", "true"] + SAMPLED + QUIET)
    main(args + ["--output_dir", str(tmp_path / "reference")] + SAMPLED + QUIET)
    resumed, reference = (json.loads((d / "results.json").read_text()) for d in (out, tmp_path / "reference"))
    assert resumed.pop("timing_s") and reference.pop("timing_s")
    assert resumed == reference
    assert read_jsonl(out / "predictions.jsonl") == read_jsonl(tmp_path / "reference" / "predictions.jsonl")
    card = json.loads((out / "predictions.jsonl.card.json").read_text())
    assert card["resumed_samples"] >= 2 and card["resumed_samples"] + card["samples"] == 2 * PROBLEMS
    assert not (out / "generations").exists()
