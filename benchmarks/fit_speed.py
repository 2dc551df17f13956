"""``w2sr fit`` tokens/s vs a bare torch + peft loop on the same model, batches, loss and optimizer (CPU).

Both train LoRA (r=16, all linear layers) on a small random-init Llama (the toy tokenizer, hidden 256, 4 layers) for
the same optimizer steps over the same micro-batches (``TraceDataModule``'s step plan, batch 8, accumulation 2),
with the same loss (``w2sr.training.losses`` chunked, token-weighted per step) and AdamW. ``w2sr fit`` runs through
the CLI (a subprocess, with the ``Throughput`` callback whose end-of-fit line gives its tokens/s); the bare loop runs in
another subprocess and times the same span (first batch to last optimizer step). Runs alternate in ABBA order
(so a drifting machine load cancels), ``--repeats`` times each; the median is reported, of wall-clock tokens/s and
of tokens per CPU second of the process (``CpuClock``; on a loaded machine run with ``OMP_NUM_THREADS=1``).
Writes ``benchmarks/results/fit_speed.json``. Run from the repository root:
``python benchmarks/fit_speed.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "fit_speed.json"
SIZES = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=64,
)


ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"}


class CpuClock(Callback):
    """``--trainer.callbacks+=fit_speed.CpuClock``: this process's CPU seconds over the training span, the measure
    that a shared, loaded machine disturbs least (wall seconds stretch with the other processes)."""

    def on_train_start(self, trainer, module) -> None:  # noqa: ANN001
        self.t0 = time.process_time()

    def on_train_end(self, trainer, module) -> None:  # noqa: ANN001
        print(f"w2sr-cpu-seconds {time.process_time() - self.t0:.4f}", flush=True)


def prepare(work: Path, n: int) -> tuple[str, str]:
    from w2sr.records.jsonl import write_jsonl
    from w2sr.records.prompts import build_messages
    from w2sr.records.traces import Trace
    from w2sr.toy import ToyTeacher, build_tiny_model, make_problems

    model = build_tiny_model(str(work / "model"), **SIZES)
    teacher = ToyTeacher(error_rate=0.3, seed=0)
    traces = [
        Trace(
            problem=p,
            sample=0,
            teacher=teacher.name,
            prompt=build_messages(p.problem),
            completion=teacher.solve(p.problem),
            finish_reason="stop",
            completion_tokens=0,
        )
        for p in make_problems(n, 0, "train")
    ]
    write_jsonl(work / "traces.jsonl", (t.to_dict() for t in traces))
    return model, str(work / "traces.jsonl")


def bare(model_path: str, traces: str, steps: int, batch_size: int, accumulate: int) -> dict:
    """The same work without Lightning: peft model, the datamodule's batches, the chunked loss, AdamW."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from w2sr.training.datamodule import TraceDataModule
    from w2sr.training.losses import token_nll_sum

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = TraceDataModule(traces, tokenizer=model_path, val_fraction=0.0, batch_size=batch_size, cache_dir=None)
    data.setup("fit")
    loader = data.train_dataloader()
    loader.sampler.accumulate = accumulate  # the same plan as Lightning's with accumulate_grad_batches
    tokens, done = 0, 0
    started, cpu_started = time.perf_counter(), time.process_time()
    while done < steps:
        for batch in loader:
            total, _ = token_nll_sum(model, batch, "chunked")
            (total / batch["step_tokens"]).backward()
            tokens += batch["num_tokens"]
            if batch["step_end"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                done += 1
                if done == steps:
                    break
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "cpu_seconds": cpu,
        "tokens_per_cpu_s": tokens / cpu,
    }


def w2sr_fit(model_path: str, traces: str, steps: int, batch_size: int, accumulate: int, root: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "w2sr.cli",
        "fit",
        "--model.model_name_or_path",
        model_path,
        "--model.finetune",
        "lora",
        "--model.dtype",
        "float32",
        "--model.loss",
        "chunked",
        "--model.optimizer.lr",
        "1e-4",
        "--model.export_dir",
        f"{root}/export",
        "--model.overwrite_export",
        "true",
        "--data.train_file",
        traces,
        "--data.val_fraction",
        "0",
        "--data.batch_size",
        str(batch_size),
        "--data.cache_dir",
        "null",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_steps",
        str(steps),
        "--trainer.accumulate_grad_batches",
        str(accumulate),
        "--trainer.gradient_clip_val",
        "1.0",
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
        root,
        "--trainer.callbacks+=w2sr.callbacks.Throughput",
        "--trainer.callbacks.log_every_n_steps=0",
        "--trainer.callbacks+=fit_speed.CpuClock",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    line = next(row for row in (out.stdout + out.stderr).splitlines() if "w2sr: throughput:" in row)
    tokens, seconds = re.search(r"([\d,]+) tokens \(.*?\) in ([\d.]+) s", line).groups()
    rate = re.search(r"([\d,]+) tok/s", line).group(1)  # 4 significant figures; the seconds are rounded to 0.1
    tokens = int(tokens.replace(",", ""))
    cpu = float(re.search(r"w2sr-cpu-seconds ([\d.]+)", out.stdout + out.stderr).group(1))
    return {
        "tokens": tokens,
        "seconds": float(seconds),
        "tokens_per_s": float(rate.replace(",", "")),
        "cpu_seconds": cpu,
        "tokens_per_cpu_s": tokens / cpu,
        "line": line,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--accumulate", type=int, default=2)
    parser.add_argument("--traces", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bare", nargs=2, metavar=("MODEL", "TRACES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.bare:
        print(json.dumps(bare(*args.bare, args.steps, args.batch_size, args.accumulate)))
        return
    load_start = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="w2sr-fit-speed-"))
    model, traces = prepare(work, args.traces)
    runs: dict[str, list[dict]] = {"w2sr_fit": [], "bare_loop": []}
    for i in range(args.repeats):
        order = ("w2sr_fit", "bare_loop") if i % 2 == 0 else ("bare_loop", "w2sr_fit")  # ABBA: drift cancels
        for name in order:
            if name == "w2sr_fit":
                runs[name].append(
                    w2sr_fit(model, traces, args.steps, args.batch_size, args.accumulate, str(work / f"run{i}"))
                )
                continue
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--bare",
                    model,
                    traces,
                    "--steps",
                    str(args.steps),
                    "--batch_size",
                    str(args.batch_size),
                    "--accumulate",
                    str(args.accumulate),
                ],
                check=True,
                capture_output=True,
                text=True,
                env=ENV,
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(
            {k: (round(v[-1]["tokens_per_s"], 1), round(v[-1]["tokens_per_cpu_s"], 1)) for k, v in runs.items()},
            flush=True,
        )
    medians = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    cpu_medians = {k: statistics.median(r["tokens_per_cpu_s"] for r in v) for k, v in runs.items()}
    result = {
        "command": "python benchmarks/fit_speed.py " + " ".join(sys.argv[1:]),
        "setup": {
            "model": {"arch": "llama (toy tokenizer)", **SIZES},
            "finetune": "lora r=16 all-linear",
            "loss": "chunked",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "accumulate_grad_batches": args.accumulate,
            "traces": args.traces,
            "device": "cpu",
        },
        "runs": runs,
        "median_tokens_per_s": {k: round(v, 1) for k, v in medians.items()},
        "w2sr_over_bare": round(medians["w2sr_fit"] / medians["bare_loop"], 3),
        "median_tokens_per_cpu_s": {k: round(v, 1) for k, v in cpu_medians.items()},
        "w2sr_over_bare_cpu_time": round(cpu_medians["w2sr_fit"] / cpu_medians["bare_loop"], 3),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "w2sr_over_bare_per_pair": [
            round(a["tokens_per_s"] / b["tokens_per_s"], 3) for a, b in zip(runs["w2sr_fit"], runs["bare_loop"])
        ],
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_start": load_start,
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"w2sr fit / bare loop tokens/s: {result['w2sr_over_bare']:.3f} (per CPU second "
        f"{result['w2sr_over_bare_cpu_time']:.3f}); written to {OUT}"
    )


if __name__ == "__main__":
    main()
