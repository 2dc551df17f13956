"""Driver of the toy weak-to-strong study: every model stage is a ``w2sr`` CLI command.

Once, under ``<output>/prior/`` (the paper, too, starts from one pretrained base model): the student's data and
random-init model (``task.py --part prior``); ``w2sr fit`` the student's prior (gold solutions of other problems, 30%
step by step, 70% answer only: a latent skill put there by hand) and a control prior (the same problems, answers
only); ``w2sr evaluate`` both. Per seed, under ``<output>/seed<N>/``: the teacher's data and random-init model
(``task.py``); ``w2sr fit`` the weak teacher on gold solutions, ``w2sr generate`` one greedy solution per pool problem
with it and ``w2sr verify --split`` them (paper grader) into W2SR / W2SR-P / W2SR-N; the RL-like reference's data:
``w2sr generate`` 4 samples per pool problem from the prior, ``w2sr verify --split``; ``w2sr fit`` from the prior,
with one budget, on W2SR, W2SR-P, W2SR-N, gold solutions of the pool (the gold reference) and the prior's own correct
samples (the RL-like reference), and from the control prior on W2SR and W2SR-P; ``w2sr evaluate`` every model
greedily on the same held-out problems; ``w2sr report`` against the gold reference (``report/``) and the RL-like one
(``report-rl/``). On the first seed also a W2SR step sweep. Then ``aggregate.py`` writes the summary over seeds
(``<output>/summary.json``, ``summary.md``, ``summary.png``) and ``<output>/timing.json`` gets the wall and CPU time
per step and the load average during the run; ``--results`` copies the small result files (summary, timing,
per-seed reports and verify summaries) there.
Steps whose outputs exist are skipped, so an interrupted run resumes; independent steps run ``--jobs`` at a time
(one thread each by default). Each step's command and output go to ``<output>/<prior|seed<N>>/logs/<step>.log``.
Exercised by ``make experiment`` and ``pytest tests/cli/test_toy_study.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
W2SR = [sys.executable, "-m", "w2sr.cli"]
# fine-tuning runs, all with fit_student.yaml: (name, prior under prior/models/, training traces, the step writing them)
FINETUNES = [
    ("w2sr", "student-prior", "splits/w2sr.jsonl", "verify"),
    ("w2sr-p", "student-prior", "splits/w2sr_p.jsonl", "verify"),
    ("w2sr-n", "student-prior", "splits/w2sr_n.jsonl", "verify"),
    ("gold", "student-prior", "data/gold_reference.jsonl", "data"),
    ("rl", "student-prior", "rl_splits/w2sr_p.jsonl", "verify-rl"),
    ("control-w2sr", "control-prior", "splits/w2sr.jsonl", "verify"),
    ("control-w2sr-p", "control-prior", "splits/w2sr_p.jsonl", "verify"),
]
SWEEP = [50, 300]  # W2SR with other step budgets (the main runs: fit_student.yaml's 150), first seed only
# the two priors, evaluated once under prior/eval/: (run name, model folder under prior/models/)
PRIORS = [("student-before", "student-prior"), ("control-before", "control-prior")]
# evaluated models of a seed, in report order: (run name, model folder under models/, the step that makes it)
EVALUATED = [("teacher", "teacher", "fit-teacher"), *((name, name, f"fit-{name}") for name, *_ in FINETUNES)]
REPORT_ORDER = [
    "teacher",
    "student-before",
    *(name for name, *_ in FINETUNES[:5]),
    "control-before",
    *(name for name, *_ in FINETUNES[5:]),
]
SWEEP_RUNS = [(f"w2sr-{n}steps", f"w2sr-{n}steps", f"fit-w2sr-{n}steps") for n in SWEEP]
# --smoke: the same pipeline shrunken to check the wiring in CI (no learning to speak of)
SMOKE_TASK = ["--n-test", "8", "--n-pool", "8", "--n-teacher", "32", "--n-prior", "32"]
SMOKE_FIT = ["--trainer.max_steps", "2", "--data.batch_size", "8"]
SMOKE_SAMPLING = ["--sampling.max_new_tokens", "24"]
SMOKE_SWEEP = [1, 3]
PRIOR_SEED = 0  # --seed_everything of both priors (task.py's PRIOR_SEED makes their init and problems)


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


def _fit(
    d: Path,
    name: str,
    config: str,
    init: Path,
    traces: Path,
    after: list[str],
    seed: int,
    smoke: bool,
    extra: Sequence[str] = (),
    optional: bool = False,
) -> Step:
    """``w2sr fit`` of one model from ``init`` on ``traces``, exported to ``<d>/models/<name>``."""
    return Step(
        f"fit-{name}",
        [
            *W2SR,
            "fit",
            "--config",
            str(CONFIGS / config),
            "--model.model_name_or_path",
            str(init),
            "--data.train_file",
            str(traces),
            "--model.export_dir",
            str(d / "models" / name),
            "--trainer.default_root_dir",
            str(d),
            "--trainer.logger.init_args.save_dir",
            str(d / "fit_logs"),
            "--seed_everything",
            str(seed),
            *(SMOKE_FIT if smoke else []),
            *extra,
        ],
        d / "models" / name / "config.json",
        after,
        needs_traces=traces if optional else None,
    )


def _evaluate(d: Path, name: str, model: Path, after: str, smoke: bool) -> Step:
    """``w2sr evaluate`` of ``model`` on the held-out problems, into ``<d>/eval/<name>``."""
    return Step(
        f"evaluate-{name}",
        [
            *W2SR,
            "evaluate",
            "--config",
            str(CONFIGS / "evaluate.yaml"),
            "--model.model_name_or_path",
            str(model),
            "--problems",
            str(d / "data" / "test.jsonl"),
            "--output_dir",
            str(d / "eval" / name),
            *(SMOKE_SAMPLING if smoke else []),
        ],
        d / "eval" / name / "results.json",
        [after],
    )


def _qualify(steps: list[Step], group: str, d: Path) -> list[Step]:
    """Prefix step names with their group (``prior``, ``seed<N>``) and give each its log under ``<d>/logs``;
    dependencies already holding a ``/`` name another group's step."""
    for step in steps:
        step.log = d / "logs" / f"{step.name}.log"
        step.name = f"{group}/{step.name}"
        step.after = [a if "/" in a else f"{group}/{a}" for a in step.after]
    return steps


def prior_steps(root: Path, smoke: bool = False) -> list[Step]:
    """The student's side, once for the whole study under ``<root>/prior/`` (the paper's base model is one
    pretrained model too): its data, the student prior and the control prior, and their held-out evaluations."""
    d = root / "prior"
    steps = [
        Step(
            "data",
            [
                sys.executable,
                str(HERE / "task.py"),
                "--part",
                "prior",
                "--output",
                str(d / "data"),
                *(SMOKE_TASK if smoke else []),
            ],
            d / "data" / "manifest.json",
        ),
        _fit(
            d,
            "student-prior",
            "fit_prior.yaml",
            d / "data" / "student-init",
            d / "data" / "gold_prior.jsonl",
            ["data"],
            PRIOR_SEED,
            smoke,
        ),
        _fit(
            d,
            "control-prior",
            "fit_prior.yaml",
            d / "data" / "student-init",
            d / "data" / "gold_prior_answers.jsonl",
            ["data"],
            PRIOR_SEED,
            smoke,
        ),
        *(_evaluate(d, name, d / "models" / model, f"fit-{model}", smoke) for name, model in PRIORS),
    ]
    return _qualify(steps, "prior", d)


def seed_steps(root: Path, seed: int, smoke: bool = False, sweep: bool = False) -> list[Step]:
    """The study's steps for one seed, in dependency order (``sweep``: also the W2SR step sweep); the priors come
    from ``prior_steps``."""
    d, prior = root / f"seed{seed}", root / "prior"
    sampling = SMOKE_SAMPLING if smoke else []

    def sample_and_verify(
        name: str, model: Path, after: str, config: str, traces: str, splits: str, summary: str
    ) -> list[Step]:
        # done when the generation card says complete; an interrupted one continues (--resume true)
        return [
            Step(
                f"generate{name}",
                [
                    *W2SR,
                    "generate",
                    "--config",
                    str(CONFIGS / config),
                    "--model.model_name_or_path",
                    str(model),
                    "--problems",
                    str(d / "data" / "pool.jsonl"),
                    "--output",
                    str(d / traces),
                    "--sampling.seed",
                    str(seed),
                    "--resume",
                    "true",
                    *sampling,
                ],
                d / f"{traces}.card.json",
                ["data", after],
            ),
            Step(
                f"verify{name}",
                [
                    *W2SR,
                    "verify",
                    "--config",
                    str(CONFIGS / "verify.yaml"),
                    "--input",
                    str(d / traces),
                    "--output",
                    str(d / traces.replace("traces", "verified")),
                    "--split",
                    str(d / splits),
                    "--summary",
                    str(d / summary),
                ],
                d / summary,
                [f"generate{name}"],
            ),
        ]

    steps = [
        Step(
            "data",
            [
                sys.executable,
                str(HERE / "task.py"),
                "--output",
                str(d / "data"),
                "--seed",
                str(seed),
                *(SMOKE_TASK if smoke else []),
            ],
            d / "data" / "manifest.json",
        ),
        _fit(
            d,
            "teacher",
            "fit_teacher.yaml",
            d / "data" / "teacher-init",
            d / "data" / "gold_teacher.jsonl",
            ["data"],
            seed,
            smoke,
        ),
        *sample_and_verify(
            "",
            d / "models" / "teacher",
            "fit-teacher",
            "generate.yaml",
            "traces.jsonl",
            "splits",
            "verify_summary.json",
        ),
        *sample_and_verify(
            "-rl",
            prior / "models" / "student-prior",
            "prior/fit-student-prior",
            "generate_rl.yaml",
            "rl_traces.jsonl",
            "rl_splits",
            "rl_verify_summary.json",
        ),
    ]
    for name, model, traces, source in FINETUNES:
        steps.append(
            _fit(
                d,
                name,
                "fit_student.yaml",
                prior / "models" / model,
                d / traces,
                [f"prior/fit-{model}", source],
                seed,
                smoke,
                optional=True,
            )
        )
    evaluated = list(EVALUATED)
    if sweep:
        for n, (name, _, _) in zip(SMOKE_SWEEP if smoke else SWEEP, SWEEP_RUNS):
            steps.append(
                _fit(
                    d,
                    name,
                    "fit_student.yaml",
                    prior / "models" / "student-prior",
                    d / "splits" / "w2sr.jsonl",
                    ["prior/fit-student-prior", "verify"],
                    seed,
                    smoke,
                    ["--trainer.max_steps", str(n)],
                    optional=True,
                )
            )
        evaluated += SWEEP_RUNS
    steps += [_evaluate(d, name, d / "models" / model, fitted, smoke) for name, model, fitted in evaluated]

    def report(reference: str, folder: str) -> Callable[[], list[str]]:
        def command() -> list[str]:
            folders = {name: (prior if name in dict(PRIORS) else d) / "eval" / name for name in REPORT_ORDER}
            runs = [str(f) for f in folders.values() if (f / "results.json").exists()]
            return [
                *W2SR,
                "report",
                "--runs",
                *runs,
                "--base",
                "student-before",
                "--reference",
                reference,
                "--teacher",
                str(d / "verify_summary.json"),
                "--output_dir",
                str(d / folder),
                "--overwrite",
                "true",
            ]

        return command

    evaluations = [*(f"evaluate-{name}" for name, *_ in EVALUATED), *(f"prior/evaluate-{name}" for name, _ in PRIORS)]
    for reference, folder in (("gold", "report"), ("rl", "report-rl")):  # report-rl: none without RL-like traces
        steps.append(
            Step(
                folder,
                report(reference, folder),
                d / folder / "report.json",
                ["verify", *evaluations],
                always=True,
                needs_traces=d / "rl_splits" / "w2sr_p.jsonl" if reference == "rl" else None,
            )
        )
    return _qualify(steps, f"seed{seed}", d)


def run_step(step: Step, env: dict[str, str], lock: threading.Lock) -> tuple[float, float]:
    """Run one step, its output to its log; return its wall and CPU seconds (user + system, the step's processes);
    raise with the log's tail when it fails."""
    assert step.log is not None
    step.log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    command = step.command() if callable(step.command) else step.command
    with open(step.log, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = code = os.waitstatus_to_exitcode(status)
    elapsed, cpu = time.time() - started, usage.ru_utime + usage.ru_stime
    with lock:
        print(
            f"[{time.strftime('%H:%M:%S')}] {step.name}: {'ok' if code == 0 else f'FAILED ({code})'} "
            f"in {elapsed:.0f} s ({cpu:.0f} CPU s)",
            flush=True,
        )
    if code != 0:
        tail = "".join(step.log.read_text(encoding="utf-8").splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{step.name} failed with exit code {code}; log {step.log}:\n{tail}")
    times = {
        "started": round(started, 1),
        "ended": round(started + elapsed, 1),
        "wall_s": round(elapsed, 1),
        "cpu_s": round(cpu, 1),
    }  # kept beside the log, so that a resumed study still adds up every step
    step.log.with_suffix(".time.json").write_text(json.dumps(times) + "\n", encoding="utf-8")
    return elapsed, cpu


def is_done(step: Step) -> bool:
    """``step.done`` exists; a generation card (written when ``w2sr generate`` starts) must also say complete."""
    if not step.done.exists():
        return False
    if step.done.name.endswith(".card.json"):
        return json.loads(step.done.read_text(encoding="utf-8")).get("complete") is True
    return True


def _no_traces(path: Path | None) -> bool:
    return path is not None and (not path.exists() or not path.read_text(encoding="utf-8").strip())


def run_steps(steps: list[Step], jobs: int, env: dict[str, str]) -> None:
    """Run steps whose dependencies are done, ``jobs`` at a time; stop at the first failure."""
    pending = {s.name: s for s in steps if not is_done(s)}
    done = {s.name for s in steps} - set(pending)
    for name in sorted(done):
        print(f"{name}: done before, skipped", flush=True)
    lock, running, skipped = threading.Lock(), {}, set()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            ready = [s for s in pending.values() if all(a in done or a in skipped for a in s.after)]
            blocked = [
                s for s in ready if _no_traces(s.needs_traces) or (not s.always and any(a in skipped for a in s.after))
            ]
            for step in blocked:
                print(
                    f"{step.name}: skipped, "
                    + (
                        f"no traces in {step.needs_traces}"
                        if _no_traces(step.needs_traces)
                        else "its input was skipped"
                    ),
                    flush=True,
                )
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


class LoadSampler(threading.Thread):
    """The 1-minute load average every ``every`` seconds while the study runs (the machine may be shared)."""

    def __init__(self, every: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self.stopped = every, [os.getloadavg()[0]], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, object]:
        values = self.samples
        return {
            "every_s": self.every,
            "min": min(values),
            "mean": round(sum(values) / len(values), 2),
            "max": max(values),
            "samples": [round(v, 2) for v in values],
        }


def stage_of(step: str) -> str:
    """The stage kind of a step name (``seed0/fit-w2sr-p`` -> ``fit-student-runs``), for the per-stage times."""
    group, kind = step.split("/", 1)
    if group == "prior" and kind == "data":
        return "prior-data"
    if kind.startswith("fit-") and kind not in ("fit-teacher", "fit-student-prior", "fit-control-prior"):
        return "fit-student-runs"
    return "evaluate" if kind.startswith("evaluate-") else "report" if kind.startswith("report") else kind


def write_timing(
    root: Path, steps: Sequence[Step], total: float, load: LoadSampler, args: argparse.Namespace
) -> dict[str, Any]:
    """``<root>/timing.json``: wall and CPU seconds of every step of the study (``logs/<step>.time.json``, from this
    invocation or an earlier one it resumed), per stage kind (summed over seeds), the study's span (first step's
    start to last step's end), each invocation with its load average, and what two idle cores would need at least:
    the larger of half the CPU seconds and the dependency chain with the most CPU seconds (one thread per step)."""
    times = {
        s.name: json.loads(s.log.with_suffix(".time.json").read_text(encoding="utf-8"))
        for s in steps
        if s.log is not None and s.log.with_suffix(".time.json").exists()
    }
    stages: dict[str, dict[str, float]] = {}
    for name, t in times.items():
        stage = stages.setdefault(stage_of(name), {"steps": 0, "wall_s": 0.0, "cpu_s": 0.0})
        stage["steps"] += 1
        stage["wall_s"], stage["cpu_s"] = round(stage["wall_s"] + t["wall_s"], 1), round(stage["cpu_s"] + t["cpu_s"], 1)
    chain: dict[str, float] = {}
    for step in steps:  # in dependency order
        chain[step.name] = times.get(step.name, {}).get("cpu_s", 0.0) + max((chain[a] for a in step.after), default=0)
    cpu = sum(t["cpu_s"] for t in times.values())
    previous = json.loads((root / "timing.json").read_text(encoding="utf-8")) if (root / "timing.json").exists() else {}
    invocations = [
        *previous.get("invocations", []),
        {
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - total)),
            "wall_s": round(total, 1),
            "jobs": args.jobs,
            "threads_per_step": args.threads,
            "load_average_1min": load.summary(),
        },
    ]
    timing = {
        "study_wall_s": round(max(t["ended"] for t in times.values()) - min(t["started"] for t in times.values()), 1)
        if times
        else 0.0,
        "cpu_s_total": round(cpu, 1),
        "cpu_s_longest_chain": round(max(chain.values(), default=0), 1),
        "two_idle_cores_at_least_s": round(max(cpu / 2, max(chain.values(), default=0)), 1),
        "cpus": os.cpu_count(),
        "seeds": args.seeds,
        "smoke": args.smoke,
        "steps": times,
        "stages": stages,
        "invocations": invocations,
    }
    (root / "timing.json").write_text(json.dumps(timing, indent=2) + "\n", encoding="utf-8")
    return timing


def copy_results(root: Path, seeds: Sequence[int], results: Path) -> None:
    """The small files RESULTS.md quotes: summary, timing, per-seed reports and verify summaries."""
    results.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "summary.md", "summary.png", "timing.json"):
        shutil.copy2(root / name, results / name)
    for seed in seeds:
        src, dst = root / f"seed{seed}", results / f"seed{seed}"
        dst.mkdir(exist_ok=True)
        for name in ("verify_summary.json", "rl_verify_summary.json"):
            if (src / name).exists():
                shutil.copy2(src / name, dst / name)
        for folder in ("report", "report-rl"):
            for name in ("report.md", "report.json"):
                if (src / folder / name).exists():
                    shutil.copy2(src / folder / name, dst / f"{folder}.{name.split('.')[1]}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/toy_w2s", help="study folder (one seed<N>/ folder per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="steps run at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per step (OMP_NUM_THREADS)")
    parser.add_argument("--smoke", action="store_true", help="shrunken sizes: checks the wiring, not the science")
    parser.add_argument("--no-sweep", action="store_true", help="skip the W2SR step sweep on the first seed")
    parser.add_argument("--results", type=Path, help="copy the summary, timing and per-seed reports here")
    args = parser.parse_args(argv)
    root = Path(args.output)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    steps = [
        *prior_steps(root, args.smoke),
        *(
            s
            for i, seed in enumerate(args.seeds)
            for s in seed_steps(root, seed, args.smoke, sweep=i == 0 and not args.no_sweep)
        ),
    ]
    # steps start in list order as their inputs exist: the sweep's fits run with seed 0's, not at the end, where the
    # 300-step fit alone left one core idle for ~40 s (a 3-seed study took 904 s instead of ~865 s)
    started, load = time.time(), LoadSampler()
    load.start()
    try:
        run_steps(steps, args.jobs, env)
    except RuntimeError as err:
        sys.exit(f"toy study: {err}")
    aggregate = [
        sys.executable,
        str(HERE / "aggregate.py"),
        "--output",
        str(root),
        *(str(root / f"seed{seed}") for seed in args.seeds),
    ]
    subprocess.run(aggregate, check=True, env=env)
    load.stopped.set()
    total = time.time() - started
    timing = write_timing(root, steps, total, load, args)
    if args.results is not None:
        copy_results(root, args.seeds, args.results)
    print(
        f"toy study: {len(args.seeds)} seed(s) in {total:.0f} s (load average {load.summary()['mean']} mean; "
        f"{timing['cpu_s_total']:.0f} CPU s over the study); summary in {root}",
        flush=True,
    )


if __name__ == "__main__":
    main()
