"""Engine factories for ``tests/generation/test_engines.py``: importable by the engine processes it spawns (they
unpickle the factory by module name), and a script entry point that runs two slow toy engines (each with a helper
process that does not watch its parent) until it is killed."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from w2sr.generation.toy import ToyTeacherBackend
from w2sr.records.jsonl import InputError


class SlowToy(ToyTeacherBackend):
    """The toy teacher, ``delay`` seconds per problem."""

    def __init__(self, tokenizer, delay: float) -> None:
        super().__init__(tokenizer)
        self.delay = delay

    def generate(self, requests, sampling):
        time.sleep(self.delay * len(requests))
        return super().generate(requests, sampling)


@dataclass
class ToyEngine:
    """Builds the toy backend; writes ``<probe_dir>/engine-<pid>.json`` with the cores and variables it started
    with; ``fail_on_cpu``: raise an input error in the engine pinned to that core (a bad option seen at start-up)."""

    model_dir: str
    probe_dir: str
    delay: float = 0.0
    fail_on_cpu: int | None = None
    helper: bool = False
    """start a helper process that does not watch its parent (as vLLM's engine core in its start-up handshake)."""

    def __call__(self):
        import subprocess

        from transformers import AutoTokenizer

        if self.helper:
            subprocess.Popen(["sleep", "600"])

        cpus = sorted(os.sched_getaffinity(0))
        seen = {
            "pid": os.getpid(),
            "cpus": cpus,
            "omp_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
            "parent_env": os.environ.get("W2SR_VLLM_PARENT"),
        }
        Path(self.probe_dir, f"engine-{os.getpid()}.json").write_text(json.dumps(seen))
        if self.fail_on_cpu is not None and cpus == [self.fail_on_cpu]:
            raise InputError("this engine cannot start", field="vllm.max_model_len")
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        return SlowToy(tokenizer, self.delay), tokenizer


def jobs(output: str, n_problems: int):
    from w2sr.generation.base import SamplingOptions
    from w2sr.generation.card import generation_settings
    from w2sr.generation.jobs import GenerateJob
    from w2sr.records.prompts import PromptOptions
    from w2sr.toy import make_problems

    sampling = SamplingOptions(n=2, temperature=1.0, batch_size=1, seed=3)
    settings = generation_settings(model="toy", adapter=None, backend="toy", prompt=PromptOptions(), sampling=sampling)
    problems = make_problems(n_problems, 0, "test")
    return [GenerateJob(output, problems, PromptOptions(), sampling, settings, progress=False)]


if __name__ == "__main__":  # python engine_probe.py MODEL PROBE_DIR OUTPUT: two slow engines, w2sr's signal handling
    from w2sr.generation.engines import run_jobs
    from w2sr.runtime.signals import Interrupted, install_signal_handlers

    install_signal_handlers()  # as w2sr.cli.main: SIGTERM unwinds (the engines are stopped), then 128 + signal
    model_dir, probe_dir, output = sys.argv[1:4]
    try:
        run_jobs(jobs(output, 400), ToyEngine(model_dir, probe_dir, delay=0.5, helper=True), engines=2)  # ~100 s
    except Interrupted as stop:
        sys.exit(128 + stop.signum)
