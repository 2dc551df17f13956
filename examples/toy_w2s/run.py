"""Driver of the toy weak-to-strong study: every model stage is a ``w2sr`` CLI command.

Per seed, under ``<output>/seed<N>/`` (every model varies with the seed, the priors included; only the 300 held-out
problems are shared): the seed's data and random-init models (``task.py``); ``w2sr fit`` the student's prior (gold
solutions of other problems, 30% step by step, 70% answer only: a latent skill put there by hand) and a control
prior (the same problems, answers only), and ``w2sr evaluate`` both; ``w2sr fit`` the weak teacher on gold
solutions, ``w2sr generate`` one greedy solution per pool problem with it and ``w2sr verify --split`` them (paper
grader) into W2SR / W2SR-P / W2SR-N; the RL-like reference's data: ``w2sr generate`` 4 samples per pool problem
from the prior, ``w2sr verify --split``; ``w2sr fit`` from the prior, with one budget, on W2SR, W2SR-P, W2SR-N, gold
solutions of the pool (the gold reference) and the prior's own correct samples (the RL-like reference), and from the
control prior on W2SR; ``w2sr fit --config configs/fit_grpo.yaml`` (``w2sr.rl.GRPOStudent``): GRPO from
the prior on the pool problems and their gold answers (the RL reference); ``w2sr evaluate`` every model greedily on
the held-out problems; ``w2sr report`` against GRPO with the cost of each arm (``--fit_runs`` the W2SR fits and the
GRPO fit, ``--teacher`` the verify summary), in ``seed<N>/report-grpo/``. Every fit runs in its own
``seed<N>/fits/<name>/`` (its ``cost.json`` and CSV log). Then, over the seeds, ``w2sr report`` with seed groups
(``name=[seed0/...,seed1/...,...]``) against each reference: ``<output>/report-gold/``, ``report-rl/`` and
``report-grpo/`` (means, sds, per-seed RGR, pooled intervals); ``aggregate.py`` adds what is specific to the study
(``<output>/summary.json``, ``summary.md``, ``summary.png``: paired sign tests against the teacher, copied slips,
the latent skill, the cost of each arm with and without the teacher's training) and ``<output>/timing.json`` gets
the wall and CPU time per step and the load average during the run; ``--results`` copies the small result files
(summary, timing, the reports, verify summaries) there.
Steps whose outputs exist are skipped, so an interrupted run resumes; independent steps run ``--jobs`` at a time
(one thread each by default). Each step's command and output go to ``<output>/<seed<N>|study>/logs/<step>.log``.
Exercised by ``make experiment`` and ``pytest tests/cli/test_toy_study.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
# fine-tuning runs, all with fit_student.yaml: (name, prior under models/, training traces, the step writing them)
FINETUNES = [
    ("w2sr", "student-prior", "splits/w2sr.jsonl", "verify"),
    ("w2sr-p", "student-prior", "splits/w2sr_p.jsonl", "verify"),
    ("w2sr-n", "student-prior", "splits/w2sr_n.jsonl", "verify"),
    ("gold", "student-prior", "data/gold_reference.jsonl", "data"),
    ("rl", "student-prior", "rl_splits/w2sr_p.jsonl", "verify-rl"),
    ("control-w2sr", "control-prior", "splits/w2sr.jsonl", "verify"),
]
PRIORS = [("student-before", "student-prior"), ("control-before", "control-prior")]  # (run name, model folder)
GRPO = "grpo"  # the GRPO run (configs/fit_grpo.yaml), from the student prior on the pool problems
# evaluated models of a seed, in report order: (run name, model folder under models/, the step that makes it)
EVALUATED = [
    ("teacher", "teacher", "fit-teacher"),
    *((name, model, f"fit-{model}") for name, model in PRIORS),
    *((name, name, f"fit-{name}") for name, *_ in FINETUNES),
    (GRPO, GRPO, f"fit-{GRPO}"),
]
REPORT_ORDER = ["teacher", "student-before", "w2sr", "w2sr-p", "w2sr-n", "gold", "rl", GRPO]
REPORT_ORDER += ["control-before", "control-w2sr"]
REFERENCES = {"gold": "report-gold", "rl": "report-rl", GRPO: "report-grpo"}  # reference run -> report folder
W2SR_ARMS = ["w2sr", "w2sr-p", "w2sr-n"]  # the fits whose cost makes a W2SR arm (with the teacher's traces)
# --smoke: the same pipeline shrunken to check the wiring in CI (no learning to speak of)
SMOKE_TASK = ["--n-test", "8", "--n-pool", "8", "--n-teacher", "32", "--n-prior", "32"]
SMOKE_FIT = ["--trainer.max_steps", "2", "--data.batch_size", "8"]
SMOKE_GRPO = ["--trainer.max_steps", "2", "--data.batch_size", "2", "--model.rl.max_new_tokens", "24"]
SMOKE_SAMPLING = ["--sampling.max_new_tokens", "24"]


@dataclass
class Step:
    """One command of the study; skipped when ``done`` exists (written last by the command itself).

    ``needs_traces``: training files that may be empty (the teacher may get every problem right, or none): when one
    is, the step is skipped, and so is every step after it, except those with ``always`` (the reports of what
    exists).
    ``command`` may be a function, called when the step starts (the report lists the runs that exist by then).
    """

    name: str
    command: list[str] | Callable[[], list[str]]
    done: Path
    after: list[str] = field(default_factory=list)
    log: Path | None = None
    needs_traces: Sequence[Path] = ()
    always: bool = False


def _fit(
    d: Path,
    name: str,
    config: str,
    init: Path,
    data: list[str],
    after: list[str],
    seed: int,
    extra: Sequence[str] = (),
    needs_traces: Path | None = None,
) -> Step:
    """``w2sr fit --config configs/<config>`` of one model from ``init`` (``data``: its data options), exported to
    ``<d>/models/<name>``, run in ``<d>/fits/<name>`` (cost.json and the CSV log)."""
    run = d / "fits" / name
    return Step(
        f"fit-{name}",
        [
            *W2SR,
            "fit",
            "--config",
            str(CONFIGS / config),
            "--model.model_name_or_path",
            str(init),
            *data,
            "--model.export_dir",
            str(d / "models" / name),
            "--trainer.default_root_dir",
            str(run),
            "--trainer.logger.init_args.save_dir",
            str(run),
            "--seed_everything",
            str(seed),
            *extra,
        ],
        d / "models" / name / "config.json",
        after,
        needs_traces=[needs_traces] if needs_traces is not None else [],
    )


def _sft(d: Path, name: str, config: str, init: Path, traces: Path, after: list[str], seed: int, smoke: bool) -> Step:
    """A supervised ``w2sr fit`` on ``traces`` (skipped when the file is empty)."""
    extra = SMOKE_FIT if smoke else []
    return _fit(d, name, config, init, ["--data.train_file", str(traces)], after, seed, extra, traces)


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
    """Prefix step names with their group (``seed<N>``, ``study``) and give each its log under ``<d>/logs``;
    dependencies already holding a ``/`` name another group's step."""
    for step in steps:
        step.log = d / "logs" / f"{step.name}.log"
        step.name = f"{group}/{step.name}"
        step.after = [a if "/" in a else f"{group}/{a}" for a in step.after]
    return steps


def _report(
    runs: Callable[[], list[str]], reference: str, output: Path, extra: Callable[[], list[str]] = list
) -> Callable[[], list[str]]:
    """A ``w2sr report`` command made when its step starts, over the runs that exist by then."""

    def command() -> list[str]:
        return [
            *W2SR,
            "report",
            "--runs",
            *runs(),
            "--base",
            "student-before",
            "--reference",
            reference,
            *extra(),
            "--output_dir",
            str(output),
            "--overwrite",
            "true",
        ]

    return command


def seed_steps(root: Path, seed: int, smoke: bool = False) -> list[Step]:
    """The study's steps for one seed, in dependency order."""
    d = root / f"seed{seed}"
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

    data = d / "data"
    steps = [
        Step(
            "data",
            [sys.executable, str(HERE / "task.py"), "--output", str(data), "--seed", str(seed)]
            + (SMOKE_TASK if smoke else []),
            data / "manifest.json",
        ),
        # the two priors: the same init, steps and problems; the control sees answers only
        _sft(
            d,
            "student-prior",
            "fit_prior.yaml",
            data / "student-init",
            data / "gold_prior.jsonl",
            ["data"],
            seed,
            smoke,
        ),
        _sft(
            d,
            "control-prior",
            "fit_prior.yaml",
            data / "student-init",
            data / "gold_prior_answers.jsonl",
            ["data"],
            seed,
            smoke,
        ),
        _sft(
            d, "teacher", "fit_teacher.yaml", data / "teacher-init", data / "gold_teacher.jsonl", ["data"], seed, smoke
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
            d / "models" / "student-prior",
            "fit-student-prior",
            "generate_rl.yaml",
            "rl_traces.jsonl",
            "rl_splits",
            "rl_verify_summary.json",
        ),
        *(
            _sft(d, name, "fit_student.yaml", d / "models" / model, d / traces, [f"fit-{model}", source], seed, smoke)
            for name, model, traces, source in FINETUNES
        ),
        _fit(
            d,
            GRPO,
            "fit_grpo.yaml",
            d / "models" / "student-prior",
            ["--data.problems", str(data / "pool.jsonl")],
            ["fit-student-prior"],
            seed,
            ["--model.rl.seed", str(seed), *(SMOKE_GRPO if smoke else [])],
        ),
    ]
    steps += [_evaluate(d, name, d / "models" / model, fitted, smoke) for name, model, fitted in EVALUATED]

    def runs() -> list[str]:
        return [str(d / "eval" / name) for name in REPORT_ORDER if (d / "eval" / name / "results.json").exists()]

    def cost() -> list[str]:
        fits = [d / "fits" / name for name in [*W2SR_ARMS, GRPO] if (d / "fits" / name / "cost.json").exists()]
        return ["--fit_runs", *map(str, fits), "--teacher", str(d / "verify_summary.json")]

    evaluations = [f"evaluate-{name}" for name, *_ in EVALUATED]
    steps.append(
        Step("report-grpo", _report(runs, GRPO, d / "report-grpo", cost), d / "report-grpo" / "report.json",
             ["verify", *evaluations], always=True)
    )  # fmt: skip
    return _qualify(steps, f"seed{seed}", d)


def group_steps(root: Path, seeds: Sequence[int]) -> list[Step]:
    """``w2sr report`` over the seeds (one seed group per model) against each reference, in ``<root>/report-<ref>``:
    models with an evaluation on every seed (a run whose training file was empty on some seed is left out)."""

    def runs() -> list[str]:
        specs = []
        for name in REPORT_ORDER:
            paths = [root / f"seed{seed}" / "eval" / name for seed in seeds]
            if all((p / "results.json").exists() for p in paths):
                specs.append(f"{name}=[{','.join(map(str, paths))}]")
        return specs

    after = [f"seed{seed}/evaluate-{name}" for seed in seeds for name, *_ in EVALUATED]
    # the RL-like reference exists on a seed only when the prior got some samples right there
    rl = [root / f"seed{seed}" / "rl_splits" / "w2sr_p.jsonl" for seed in seeds]
    steps = [
        Step(
            folder,
            _report(runs, reference, root / folder),
            root / folder / "report.json",
            after,
            needs_traces=rl if reference == "rl" else [],
            always=True,
        )
        for reference, folder in REFERENCES.items()
    ]
    return _qualify(steps, "study", root / "study")


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


def _no_traces(paths: Sequence[Path]) -> Path | None:
    """The first of ``paths`` that is missing or empty (None: all hold traces)."""
    return next((p for p in paths if not p.exists() or not p.read_text(encoding="utf-8").strip()), None)


# rough CPU seconds of a step by kind (the 3-seed run of 2026-12-07), only to order the steps that are ready
STEP_WEIGHTS = {"fit-student-prior": 250.0, "fit-control-prior": 120.0, "fit-grpo": 90.0, "fit-teacher": 65.0}


def step_weight(name: str) -> float:
    """The rough cost of step ``name`` (``seed0/fit-grpo``): ``STEP_WEIGHTS``, other fits 30, the rest 12."""
    kind = name.split("/", 1)[-1]
    return STEP_WEIGHTS.get(kind, 30.0 if kind.startswith("fit-") else 12.0)


def critical_paths(steps: Sequence[Step]) -> dict[str, float]:
    """For each step, its weight plus the heaviest chain of steps that wait on it (``step_weight``): ready steps
    start in that order, longest first, so that with ``--jobs 2`` every seed's prior starts early and no core idles
    at the end while a long chain runs alone (list order ran the seeds one after another)."""
    waiting: dict[str, list[str]] = {s.name: [] for s in steps}
    for s in steps:
        for a in s.after:
            waiting.setdefault(a, []).append(s.name)
    paths: dict[str, float] = {}

    def path(name: str) -> float:
        if name not in paths:
            paths[name] = step_weight(name) + max((path(w) for w in waiting.get(name, [])), default=0.0)
        return paths[name]

    for s in steps:
        path(s.name)
    return paths


def run_steps(steps: list[Step], jobs: int, env: dict[str, str]) -> None:
    """Run steps whose dependencies are done, ``jobs`` at a time, the longest remaining chain first
    (``critical_paths``); stop at the first failure."""
    priority = critical_paths(steps)
    pending = {s.name: s for s in steps if not is_done(s)}
    done = {s.name for s in steps} - set(pending)
    for name in sorted(done):
        print(f"{name}: done before, skipped", flush=True)
    lock, running, skipped = threading.Lock(), {}, set()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            ready = [s for s in pending.values() if all(a in done or a in skipped for a in s.after)]
            ready.sort(key=lambda s: -priority[s.name])  # stable: ties keep list order
            blocked = [
                s for s in ready if _no_traces(s.needs_traces) or (not s.always and any(a in skipped for a in s.after))
            ]
            for step in blocked:
                print(
                    f"{step.name}: skipped, "
                    + (
                        f"no traces in {_no_traces(step.needs_traces)}"
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
    _, kind = step.split("/", 1)
    if kind.startswith("fit-") and kind not in ("fit-teacher", "fit-student-prior", "fit-control-prior", "fit-grpo"):
        return "fit-student-runs"
    return "evaluate" if kind.startswith("evaluate-") else "report" if kind.startswith("report") else kind


def write_timing(
    root: Path, steps: Sequence[Step], total: float, load: LoadSampler, args: argparse.Namespace, aggregate_cpu: float
) -> dict[str, Any]:
    """``<root>/timing.json``: wall and CPU seconds of every step of the study (``logs/<step>.time.json``, from this
    invocation or an earlier one it resumed), per stage kind (summed over seeds), the study's span (first step's
    start to last step's end), each invocation with its load average, and what two idle cores would need at least:
    the larger of half the CPU seconds and the dependency chain with the most CPU seconds (one thread per step).
    ``aggregate_cpu``: the CPU seconds of this invocation's ``aggregate.py`` (counted in ``cpu_s_total``)."""
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
    cpu = sum(t["cpu_s"] for t in times.values()) + aggregate_cpu
    previous = json.loads((root / "timing.json").read_text(encoding="utf-8")) if (root / "timing.json").exists() else {}
    invocations = [
        *previous.get("invocations", []),
        {
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - total)),
            "wall_s": round(total, 1),
            "jobs": args.jobs,
            "threads_per_step": args.threads,
            "aggregate_cpu_s": round(aggregate_cpu, 1),
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
    """The small files RESULTS.md quotes: summary, timing, the reports over seeds (``report-<reference>.md`` /
    ``.json`` / ``.png``) and per seed the verify summaries and the report against GRPO with the cost of each arm."""
    results.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "summary.md", "summary.png", "timing.json"):
        shutil.copy2(root / name, results / name)

    def reports(src: Path, dst: Path, folders: Sequence[str], kinds: Sequence[str]) -> None:
        for folder in folders:
            for kind in kinds:
                if (src / folder / f"report.{kind}").exists():
                    shutil.copy2(src / folder / f"report.{kind}", dst / f"{folder}.{kind}")

    reports(root, results, list(REFERENCES.values()), ("md", "json", "png"))
    for seed in seeds:
        src, dst = root / f"seed{seed}", results / f"seed{seed}"
        dst.mkdir(exist_ok=True)
        for name in ("verify_summary.json", "rl_verify_summary.json"):
            if (src / name).exists():
                shutil.copy2(src / name, dst / name)
        reports(src, dst, ["report-grpo"], ("md", "json"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/toy_w2s", help="study folder (one seed<N>/ folder per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="steps run at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per step (OMP_NUM_THREADS)")
    parser.add_argument("--smoke", action="store_true", help="shrunken sizes: checks the wiring, not the science")
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
    steps = [*(s for seed in args.seeds for s in seed_steps(root, seed, args.smoke)), *group_steps(root, args.seeds)]
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
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(aggregate, check=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    aggregate_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    load.stopped.set()
    total = time.time() - started
    timing = write_timing(root, steps, total, load, args, aggregate_cpu)
    if args.results is not None:
        copy_results(root, args.seeds, args.results)
    print(
        f"toy study: {len(args.seeds)} seed(s) in {total:.0f} s (load average {load.summary()['mean']} mean; "
        f"{timing['cpu_s_total']:.0f} CPU s over the study); summary in {root}",
        flush=True,
    )


if __name__ == "__main__":
    main()
