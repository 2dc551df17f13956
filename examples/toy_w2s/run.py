"""Driver of the toy weak-to-strong study: every model stage is a ``w2sr`` CLI command, run per seed.

Per seed, under ``<output>/seed<N>/``: the task's data and two random-init models (``task.py``), then
``w2sr fit`` the weak teacher on gold solutions, ``w2sr generate`` several sampled solutions per pool problem with
it, ``w2sr verify --split`` them into W2SR / W2SR-P / W2SR-N, ``w2sr fit`` the student's prior (gold solutions of
easier problems), ``w2sr fit`` the student from its prior on each variant and on gold solutions of the pool
(the reference) with the same budget, ``w2sr evaluate`` the six models on the same held-out problems and
``w2sr report`` them. Then ``aggregate.py`` writes the mean and spread over seeds (``<output>/summary.json``,
``summary.md``, ``summary.png``). Steps whose outputs exist are skipped, so an interrupted run resumes; independent
steps run ``--jobs`` at a time (one thread each by default). Each step's command and output go to
``<output>/seed<N>/logs/<step>.log``. Exercised by ``make experiment`` and ``pytest tests/cli/test_toy_study.py``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
W2SR = [sys.executable, "-m", "w2sr.cli"]
# evaluation runs, in report order: (run name, model folder under the seed folder)
EVALUATED = [("teacher", "models/teacher"), ("student-before", "models/student-prior"),
             ("w2sr", "models/student-w2sr"), ("w2sr-p", "models/student-w2sr-p"),
             ("w2sr-n", "models/student-w2sr-n"), ("reference", "models/student-reference")]
# student fine-tuning runs: (name, training traces under the seed folder), all with fit_student.yaml
STUDENT_RUNS = [("w2sr", "splits/w2sr.jsonl"), ("w2sr-p", "splits/w2sr_p.jsonl"), ("w2sr-n", "splits/w2sr_n.jsonl"),
                ("reference", "data/gold_reference.jsonl")]
# --smoke: the same pipeline shrunken to check the wiring in CI (no learning to speak of)
SMOKE_TASK = ["--n-test", "12", "--n-pool", "12", "--n-teacher", "48", "--n-prior", "48"]
SMOKE_FIT = ["--trainer.max_steps", "4", "--data.batch_size", "8"]
SMOKE_SAMPLING = ["--sampling.max_new_tokens", "40"]


@dataclass
class Step:
    """One command of the study; skipped when ``done`` exists (written last by the command itself).

    ``needs_traces``: a training file that may be empty (the teacher may get every problem right, or none): then the
    step is skipped, and so is every step after it, except those with ``always`` (the report of what exists).
    ``command`` may be a function, called when the step starts (the report lists the runs that exist by then).
    """

    name: str
    command: list[str] | Callable[[], list[str]]
    done: Path
    after: list[str] = field(default_factory=list)
    log: Path | None = None
    needs_traces: Path | None = None
    always: bool = False


def seed_steps(root: Path, seed: int, smoke: bool = False) -> list[Step]:
    """The study's steps for one seed, in dependency order."""
    d = root / f"seed{seed}"
    fit = SMOKE_FIT if smoke else []
    sampling = SMOKE_SAMPLING if smoke else []
    logger = ["--trainer.default_root_dir", str(d), "--trainer.logger.init_args.save_dir", str(d / "fit_logs"),
              "--seed_everything", str(seed)]
    steps = [
        Step("data", [sys.executable, str(HERE / "task.py"), "--output", str(d / "data"), "--seed", str(seed),
                      *(SMOKE_TASK if smoke else [])], d / "data" / "manifest.json"),
        Step("fit-teacher", [*W2SR, "fit", "--config", str(CONFIGS / "fit_teacher.yaml"),
                             "--model.model_name_or_path", str(d / "data" / "teacher-init"),
                             "--data.train_file", str(d / "data" / "gold_teacher.jsonl"),
                             "--model.export_dir", str(d / "models" / "teacher"), *logger, *fit],
             d / "models" / "teacher" / "config.json", ["data"]),
        Step("generate", [*W2SR, "generate", "--config", str(CONFIGS / "generate.yaml"),
                          "--model.model_name_or_path", str(d / "models" / "teacher"),
                          "--problems", str(d / "data" / "pool.jsonl"), "--output", str(d / "traces.jsonl"),
                          "--sampling.seed", str(seed), *sampling], d / "traces.jsonl", ["fit-teacher"]),
        Step("verify", [*W2SR, "verify", "--config", str(CONFIGS / "verify.yaml"), "--input", str(d / "traces.jsonl"),
                        "--output", str(d / "verified.jsonl"), "--split", str(d / "splits"),
                        "--summary", str(d / "verify_summary.json")], d / "verify_summary.json", ["generate"]),
        Step("fit-prior", [*W2SR, "fit", "--config", str(CONFIGS / "fit_prior.yaml"),
                           "--model.model_name_or_path", str(d / "data" / "student-init"),
                           "--data.train_file", str(d / "data" / "gold_prior.jsonl"),
                           "--model.export_dir", str(d / "models" / "student-prior"), *logger, *fit],
             d / "models" / "student-prior" / "config.json", ["data"]),
    ]
    for name, traces in STUDENT_RUNS:
        steps.append(Step(f"fit-{name}", [*W2SR, "fit", "--config", str(CONFIGS / "fit_student.yaml"),
                                          "--model.model_name_or_path", str(d / "models" / "student-prior"),
                                          "--data.train_file", str(d / traces),
                                          "--model.export_dir", str(d / "models" / f"student-{name}"),
                                          *logger, *fit],
                          d / "models" / f"student-{name}" / "config.json",
                          ["fit-prior", "data" if name == "reference" else "verify"], needs_traces=d / traces))
    for name, model in EVALUATED:
        fitted = {"teacher": "fit-teacher", "student-before": "fit-prior"}.get(name, f"fit-{name}")
        steps.append(Step(f"evaluate-{name}", [*W2SR, "evaluate", "--config", str(CONFIGS / "evaluate.yaml"),
                                               "--model.model_name_or_path", str(d / model),
                                               "--problems", str(d / "data" / "test.jsonl"),
                                               "--output_dir", str(d / "eval" / name), *sampling],
                          d / "eval" / name / "results.json", [fitted]))
    def report() -> list[str]:
        runs = [str(d / "eval" / name) for name, _ in EVALUATED if (d / "eval" / name / "results.json").exists()]
        return [*W2SR, "report", "--runs", *runs, "--base", "student-before", "--reference", "reference",
                "--teacher", str(d / "verify_summary.json"), "--output_dir", str(d / "report")]

    steps.append(Step("report", report, d / "report" / "report.json",
                      ["verify", *(f"evaluate-{name}" for name, _ in EVALUATED)], always=True))
    for step in steps:
        step.log = d / "logs" / f"{step.name}.log"
        step.name = f"seed{seed}/{step.name}"
        step.after = [f"seed{seed}/{a}" for a in step.after]
    return steps


def run_step(step: Step, env: dict[str, str], lock: threading.Lock) -> float:
    """Run one step, its output to its log; raise with the log's tail when it fails."""
    assert step.log is not None
    step.log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    command = step.command() if callable(step.command) else step.command
    with open(step.log, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    elapsed = time.time() - started
    with lock:
        print(f"[{time.strftime('%H:%M:%S')}] {step.name}: {'ok' if code == 0 else f'FAILED ({code})'} "
              f"in {elapsed:.0f} s", flush=True)
    if code != 0:
        tail = "".join(step.log.read_text(encoding="utf-8").splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{step.name} failed with exit code {code}; log {step.log}:\n{tail}")
    return elapsed


def _no_traces(path: Path | None) -> bool:
    return path is not None and (not path.exists() or not path.read_text(encoding="utf-8").strip())


def run_steps(steps: list[Step], jobs: int, env: dict[str, str]) -> None:
    """Run steps whose dependencies are done, ``jobs`` at a time; stop at the first failure."""
    pending = {s.name: s for s in steps if not s.done.exists()}
    done = {s.name for s in steps} - set(pending)
    for name in sorted(done):
        print(f"{name}: done before, skipped", flush=True)
    lock, running, skipped = threading.Lock(), {}, set()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            ready = [s for s in pending.values() if all(a in done or a in skipped for a in s.after)]
            blocked = [s for s in ready if _no_traces(s.needs_traces)
                       or (not s.always and any(a in skipped for a in s.after))]
            for step in blocked:
                print(f"{step.name}: skipped, " + (f"no traces in {step.needs_traces}"
                                                   if _no_traces(step.needs_traces) else "its input was skipped"),
                      flush=True)
                skipped.add(step.name)
                del pending[step.name]
            if blocked:
                continue  # skipping may make more steps ready
            for step in ready[: max(0, jobs - len(running))]:
                running[pool.submit(run_step, step, env, lock)] = step.name
                del pending[step.name]
            if not running:
                raise RuntimeError(f"steps cannot start: {sorted(pending)}")
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                future.result()  # re-raises the step's failure; the pool waits for the steps still running
                done.add(name)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/toy_w2s", help="study folder (one seed<N>/ folder per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="steps run at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per step (OMP_NUM_THREADS)")
    parser.add_argument("--smoke", action="store_true", help="shrunken sizes: checks the wiring, not the science")
    args = parser.parse_args(argv)
    root = Path(args.output)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    steps = [s for seed in args.seeds for s in seed_steps(root, seed, args.smoke)]
    started = time.time()
    try:
        run_steps(steps, args.jobs, env)
    except RuntimeError as err:
        sys.exit(f"toy study: {err}")
    aggregate = [sys.executable, str(HERE / "aggregate.py"), "--output", str(root),
                 *(str(root / f"seed{seed}") for seed in args.seeds)]
    subprocess.run(aggregate, check=True, env=env)
    print(f"toy study: {len(args.seeds)} seed(s) in {time.time() - started:.0f} s; summary in {root}", flush=True)


if __name__ == "__main__":
    main()
