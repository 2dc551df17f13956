"""Training throughput on one device: ``w2sr fit``'s code path before/after each speed option, a bare loop and TRL.

One run, one device, the same random model, traces and batch for every runner, so only the runner differs:

* ``w2sr-before`` / ``w2sr-after`` / ``w2sr+<option>``: ``StudentModule`` + ``TraceDataModule`` + Lightning's
  ``Trainer`` (what ``w2sr fit`` runs); *before* has every issue-19 option off (``model.compile``,
  ``model.liger_kernels``, ``model.fused_optimizer``, ``data.num_workers`` 0, ``data.pin_memory`` false), *after*
  has them on where they apply, ``+<option>`` one at a time;
* ``bare``: transformers + peft + ``torch.optim.AdamW`` over the same batches with the same loss
  (``w2sr.training.losses``), bf16 autocast: the floor any trainer adds overhead to;
* ``trl``: TRL's ``SFTTrainer`` with its best settings for the job (prompt-completion loss, packing with
  padding-free batches for the mix, Liger when installed, gradient checkpointing), when ``trl`` is importable.

Settings: ``qlora-0.5b`` (nf4, r=64 all-linear, a Qwen2.5-0.5B shape), ``lora-0.5b`` (bf16 base), ``full-1.5b``
(a Qwen2.5-1.5B shape, float32 master weights, bf16-mixed, FSDP on one GPU), each on ``fixed`` (8 x 2,048-token
traces) and ``mix`` (a log-normal 200-4,096-token mix packed into 4 rows of 4,096). Every run reports tokens/s,
target tokens/s, MFU (model FLOPs of ``w2sr.callbacks.Throughput``, recomputation not counted, against
``--peak_tflops``) and peak memory. Runs go in priority order until ``--budget_s`` is spent; the rest are listed as
skipped. Each run has its own process (Liger's and TRL's patches are global to a process). ``--tiny`` checks the
script on the CPU (a tiny model, LoRA only, ``aot_eager`` instead of inductor for ``model.compile``; figures
meaningless).

    python benchmarks/gpu_throughput.py --out_dir benchmarks/results/gpu        # on a GPU (gpu_check.sh)
    python benchmarks/gpu_throughput.py --tiny --out_dir /tmp/tp                # CPU smoke run
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import gpu_fit  # noqa: E402  (build_model, write_traces, lognormal_lengths, StepTimer, QWEN05, TINY)

QWEN15 = dict(
    hidden_size=1536,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    intermediate_size=8960,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1e6,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
)
SETTINGS = {
    "qlora-0.5b": dict(shape="qwen2.5-0.5b", finetune="lora", quantization="nf4", dtype="bfloat16", fsdp=False),
    "lora-0.5b": dict(shape="qwen2.5-0.5b", finetune="lora", quantization="none", dtype="bfloat16", fsdp=False),
    "full-1.5b": dict(shape="qwen2.5-1.5b", finetune="full", quantization="none", dtype="auto", fsdp=True),
}
SHAPES = {"qwen2.5-0.5b": gpu_fit.QWEN05, "qwen2.5-1.5b": QWEN15, "tiny": gpu_fit.TINY}
DATA = {
    "fixed": dict(batch_size=8, max_seq_length=2048, packing=False),
    "mix": dict(batch_size=4, max_seq_length=4096, packing=True),
}
TINY_DATA = {
    "fixed": dict(batch_size=2, max_seq_length=256, packing=False),
    "mix": dict(batch_size=2, max_seq_length=512, packing=True),
}
OPTIONS, LORA_R = ("compile", "liger_kernels", "fused_optimizer", "loader"), 64


def plan(tiny: bool, trl: bool) -> list[tuple[str, str, str]]:
    """``(setting, data, runner)`` in priority order: the targets' comparisons first, single options last."""
    if tiny:
        extra = ("trl",) if trl else ()
        return [("lora-0.5b", "fixed", r) for r in ("w2sr-before", "w2sr-after", "bare") + extra] + [
            ("lora-0.5b", "mix", r) for r in ("w2sr-after", "bare") + extra
        ]
    head = ["w2sr-before", "bare", "w2sr-after"] + (["trl"] if trl else [])
    runs = [("qlora-0.5b", "fixed", r) for r in head] + [("full-1.5b", "fixed", r) for r in head]
    runs += [("qlora-0.5b", "mix", r) for r in head] + [("lora-0.5b", "fixed", r) for r in head]
    runs += [("qlora-0.5b", "fixed", f"w2sr+{o}") for o in ("liger_kernels", "compile", "loader")]
    runs += [("full-1.5b", "fixed", f"w2sr+{o}") for o in ("fused_optimizer", "compile")]
    return runs + [("full-1.5b", "mix", r) for r in head] + [("lora-0.5b", "mix", r) for r in head]


def options_for(runner: str, setting: dict[str, Any], cuda: bool) -> dict[str, bool]:
    on = {o: False for o in OPTIONS}
    if runner == "w2sr-after":
        on.update(compile=True, liger_kernels=cuda and _importable("liger_kernel"), fused_optimizer=True, loader=cuda)
    elif runner.startswith("w2sr+"):
        on[runner[5:]] = True
    return on


def _importable(name: str) -> bool:
    try:
        return importlib.import_module(name) is not None
    except Exception:  # noqa: BLE001 - a broken optional install counts as missing
        return False


def _loss(cuda: bool) -> str:
    return "liger" if cuda and _importable("liger_kernel") else "chunked"


def _summary(
    model: Any, device: str, totals: torch.Tensor, seconds: float, peak: float | None, args: argparse.Namespace
) -> dict[str, Any]:
    from w2sr.training.callbacks import Throughput

    shim = types.SimpleNamespace(model=model, device=torch.device("cpu"))  # peak memory is measured by the caller
    metrics = Throughput(peak_tflops=args.peak_tflops if device == "cuda" else None)._metrics(shim, totals, seconds, 1)
    tokens, targets, _, _ = totals.tolist()
    return {
        "seconds": round(seconds, 3),
        "tokens": int(tokens),
        "target_tokens": int(targets),
        "tokens_per_s": round(metrics["throughput/tokens_per_s"]),
        "tflops_per_s": round(metrics["throughput/tflops_per_s"], 2),
        "target_tokens_per_s": round(metrics["throughput/target_tokens_per_s"]),
        "padding_share": round(metrics["throughput/padding_share"], 4),
        "mfu": round(metrics["throughput/mfu"], 4) if "throughput/mfu" in metrics else None,
        "peak_gib": round(peak, 2) if peak is not None else None,
    }


def run_w2sr(
    setting: dict[str, Any],
    data: dict[str, Any],
    options: dict[str, bool],
    model_dir: Path,
    traces: Path,
    work: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    import lightning as L

    from w2sr.training.datamodule import TraceDataModule
    from w2sr.training.loading import LoraOptions
    from w2sr.training.module import StudentModule

    class BenchModule(StudentModule):
        def on_train_end(self) -> None:  # no export: a consolidated 1.5B model would cost more than the run
            pass

    cuda = args.device == "cuda"
    module = BenchModule(
        str(model_dir),
        finetune=setting["finetune"],
        quantization=setting["quantization"],
        dtype=setting["dtype"] if cuda else "float32",
        gradient_checkpointing=not (setting["fsdp"] and cuda),  # FSDP: per-layer checkpointing
        lora=LoraOptions(r=LORA_R, alpha=2 * LORA_R, dropout=0.0),
        loss=_loss(cuda),
        compile=options["compile"],
        liger_kernels=options["liger_kernels"],
        fused_optimizer=options["fused_optimizer"],
        overwrite_export=True,
        export_dir=str(work / "export"),
    )
    dm = TraceDataModule(
        str(traces),
        tokenizer=str(model_dir),
        val_fraction=0.0,
        cache_dir=None,
        num_workers=None if options["loader"] else 0,
        pin_memory=options["loader"],
        **data,
    )
    strategy: Any = "auto"
    if setting["fsdp"] and cuda:
        from w2sr.training.strategies import W2SRFSDPStrategy

        strategy = W2SRFSDPStrategy(sharding_strategy="FULL_SHARD", state_dict_type="full")
    timer = gpu_fit.StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        strategy=strategy,
        precision="bf16-mixed" if cuda else "32-true",
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=10,
        callbacks=[timer.callback()],
        default_root_dir=str(work),
    )
    trainer.fit(module, dm)
    out = _summary(module.model, args.device, timer.totals, timer.elapsed, timer.peak_gib, args)
    out["loss"] = module.loss_impl
    return out


def _bare_model(setting: dict[str, Any], model_dir: Path, cuda: bool) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cuda and setting["finetune"] == "lora" else torch.float32}
    if setting["quantization"] == "nf4" and cuda:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if setting["finetune"] == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
            ),
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to("cuda" if cuda else "cpu").train()


def run_bare(
    setting: dict[str, Any], data: dict[str, Any], model_dir: Path, traces: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """transformers + peft + torch AdamW over the datamodule's batches, the same loss; nothing else."""
    from w2sr.training.callbacks import Throughput
    from w2sr.training.datamodule import TraceDataModule
    from w2sr.training.losses import token_nll_sum

    cuda = args.device == "cuda"
    model = _bare_model(setting, model_dir, cuda)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    dm = TraceDataModule(str(traces), tokenizer=str(model_dir), val_fraction=0.0, cache_dir=None, num_workers=0, **data)
    dm.setup("fit")
    device, impl, totals, start, steps = (
        torch.device(args.device),
        _loss(cuda),
        torch.zeros(4, dtype=torch.float64),
        None,
        0,
    )
    for batch in dm.train_dataloader():
        if steps == args.warmup and start is None:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
        inputs = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=cuda):
            total, _ = token_nll_sum(model, inputs, impl, 1024)
        (total / batch["step_tokens"]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if start is not None:
            totals += torch.tensor(Throughput._counts(batch), dtype=torch.float64)
        steps += 1
        if steps == args.warmup + args.steps:
            break
    torch.cuda.synchronize() if cuda else None
    elapsed = time.perf_counter() - start if start is not None else 0.0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    out = _summary(model, args.device, totals, elapsed, peak, args)
    out["loss"] = impl
    return out


def run_trl(
    setting: dict[str, Any], data: dict[str, Any], model_dir: Path, traces: Path, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """TRL ``SFTTrainer`` on the same traces as prompt-completion records (loss on the completion only)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from w2sr.training.loading import load_tokenizer

    cuda, rows = args.device == "cuda", [json.loads(line) for line in traces.read_text().splitlines()]
    dataset = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows]
    )
    model = _bare_model(setting, model_dir, cuda)  # the bare loop's model (peft-wrapped for LoRA)
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):  # noqa: ANN001
            if state.global_step == args.warmup and "start" not in marks:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                marks.update(start=time.perf_counter(), tokens=float(state.num_input_tokens_seen))

        def on_train_end(self, a, state, control, **kw):  # noqa: ANN001
            if cuda:
                torch.cuda.synchronize()
            marks.update(end=time.perf_counter(), tokens_end=float(state.num_input_tokens_seen))

    config = SFTConfig(
        output_dir=str(work / "trl"),
        max_steps=args.warmup + args.steps,
        learning_rate=1e-5,
        per_device_train_batch_size=data["batch_size"],
        max_length=data["max_seq_length"],
        packing=data["packing"],
        padding_free=data["packing"],
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=cuda,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_liger_kernel=cuda and _importable("liger_kernel"),
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=2 if cuda else 0,
        dataloader_pin_memory=cuda,
        use_cpu=not cuda,
        max_grad_norm=1.0,
        seed=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=load_tokenizer(str(model_dir)),
        callbacks=[Clock()],
    )
    trainer.train()
    tokens = marks.get("tokens_end", 0.0) - marks.get("tokens", 0.0)
    share = sum(len(r["completion"]) for r in rows) / max(1, sum(len(r["completion"]) + 40 for r in rows))
    width = data["max_seq_length"]
    totals = torch.tensor([tokens, tokens * share, tokens, tokens * width], dtype=torch.float64)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    out = _summary(trainer.model, args.device, totals, marks.get("end", 0.0) - marks.get("start", 0.0), peak, args)
    out.update(loss="trl" + ("+liger" if config.use_liger_kernel else ""), target_tokens_estimated=True)
    return out


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("torch", "transformers", "peft", "lightning", "bitsandbytes", "liger_kernel", "trl", "accelerate"):
        try:
            module = importlib.import_module(name)
            out[name] = str(getattr(module, "__version__", "installed"))
        except Exception:  # noqa: BLE001
            out[name] = "missing"
    return out


def table(result: dict[str, Any]) -> str:
    """The runs as a markdown table, with each w2sr row's ratio to the bare loop and to TRL of its setting."""
    rows = {r["name"]: r for r in result["runs"]}
    lines = [
        f"Device {result['device']}, {result['date']}, `{result['command']}`; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + ".",
        "",
        "| setting | data | runner | loss | tokens/s | target tokens/s | MFU | peak GiB | vs bare | vs TRL |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        if "tokens_per_s" not in r:
            why = r.get("skipped") or "error: " + str(r.get("error", ""))[:80].replace("|", "/")
            lines.append(f"| {r['setting']} | {r['data']} | {r['runner']} | | {why} | | | | | |")
            continue
        ratio = {}
        for other in ("bare", "trl"):
            ref = rows.get(f"{r['setting']}/{r['data']}/{other}", {})
            ratio[other] = (
                f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x"
                if r["runner"].startswith("w2sr") and ref.get("tokens_per_s")
                else ""
            )
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else ""
        lines.append(
            f"| {r['setting']} | {r['data']} | {r['runner']} | {r.get('loss', '')} | {r['tokens_per_s']:,} | "
            f"{r['target_tokens_per_s']:,} | {mfu} | {r.get('peak_gib') or ''} | {ratio['bare']} | "
            f"{ratio['trl']} |"
        )
    return "\n".join(lines) + "\n"


def run_isolated(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One run in its own process: Liger's and TRL's patches are global to a process, and so are compile caches."""
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        return {"error": f"exit {out.returncode}: " + (out.stderr or out.stdout)[-600:]}
    return json.loads(lines[-1])


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    args = argparse.Namespace(**spec["args"])
    if args.tiny:  # the smoke run checks the wiring: inductor's C++ build takes minutes on a loaded CPU
        from w2sr.training import speed

        speed.COMPILE_BACKEND = "aot_eager"
    runner, setting, data = spec["row"]["runner"], spec["setting"], spec["data"]
    model_dir, traces, work = Path(spec["model_dir"]), Path(spec["traces"]), Path(spec["work"])
    try:
        if runner.startswith("w2sr"):
            return run_w2sr(setting, data, spec["row"]["options"], model_dir, traces, work, args)
        if runner == "bare":
            return run_bare(setting, data, model_dir, traces, args)
        return run_trl(setting, data, model_dir, traces, work, args)
    except Exception as err:  # noqa: BLE001 - recorded in the row; the next run goes on
        return {"error": repr(err)[:600]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on a tiny model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per run (6; tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (2, compile included; tiny 1)")
    parser.add_argument(
        "--budget_s", type=float, default=None, help="start no run after this many seconds (240; tiny: no limit)"
    )
    parser.add_argument("--only", default="", help="comma-separated setting:data:runner triples to run")
    parser.add_argument("--peak_tflops", type=float, default=790.0, help="measured bf16 matmul ceiling (H100/H200)")
    parser.add_argument("--out_dir", default="benchmarks/results/gpu")
    parser.add_argument("--table", metavar="JSON", help="print the markdown table of a result file and exit")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run, in its own process
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    if args.table:
        print(table(json.loads(Path(args.table).read_text())), end="")
        return
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.steps = args.steps or (2 if args.tiny else 6)
    args.warmup = args.warmup or (1 if args.tiny else 2)
    args.budget_s = args.budget_s or (3600.0 if args.tiny else 240.0)
    started, results = time.time(), []
    has_trl = _importable("trl") and _importable("datasets")
    todo = plan(args.tiny, has_trl)
    if args.only:
        todo = [tuple(t.split(":")) for t in args.only.split(",")]  # type: ignore[misc]
    data_sizes = TINY_DATA if args.tiny else DATA
    with tempfile.TemporaryDirectory(prefix="w2sr-throughput-") as tmp:
        work, models, traces = Path(tmp), {}, {}
        for i, (setting_name, data_name, runner) in enumerate(todo):
            name = f"{setting_name}/{data_name}/{runner}"
            row: dict[str, Any] = {"name": name, "setting": setting_name, "data": data_name, "runner": runner}
            if time.time() - started > args.budget_s:
                results.append({**row, "skipped": "time budget"})
                continue
            setting, data = SETTINGS[setting_name], data_sizes[data_name]
            if args.device != "cuda":
                setting = {**setting, "quantization": "none", "fsdp": False}
            shape = "tiny" if args.tiny else setting["shape"]
            if shape not in models:
                models[shape] = work / f"model-{shape}"
                row_params = gpu_fit.build_model(models[shape], SHAPES[shape], args.device)
                models[f"{shape}:params"] = row_params
            if data_name not in traces:
                n = 3 * data["batch_size"] * (args.warmup + args.steps) + 8
                lengths = (
                    [data["max_seq_length"] - 40] * n
                    if data_name == "fixed"
                    else gpu_fit.lognormal_lengths(2 * n, seed=1, hi=data["max_seq_length"] - 40)
                )
                traces[data_name] = work / f"{data_name}.jsonl"
                gpu_fit.write_traces(traces[data_name], lengths, seed=0)
            row["options"] = options_for(runner, setting, args.device == "cuda") if runner.startswith("w2sr") else {}
            spec = {
                "row": row,
                "setting": setting,
                "data": data,
                "model_dir": str(models[shape]),
                "traces": str(traces[data_name]),
                "work": str(work / f"run{i}"),
                "args": {k: getattr(args, k) for k in ("device", "steps", "warmup", "peak_tflops", "tiny")},
            }
            t0 = time.time()
            row.update(run_isolated(spec, timeout=max(60.0, args.budget_s + 90 - (time.time() - started))))
            row["wall_s"] = round(time.time() - t0, 1)
            print(json.dumps(row), flush=True)
            results.append(row)
    device = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or "cpu")
    out = {
        "command": "python " + " ".join(sys.argv),
        "device": device,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "versions": versions(),
        "steps_timed": args.steps,
        "warmup_steps": args.warmup,
        "peak_tflops": args.peak_tflops,
        "runs": results,
        "wall_s": round(time.time() - started, 1),
    }
    path = Path(args.out_dir) / "gpu_throughput.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
