"""Fit throughput and peak memory of the student on one device: loss implementations, padding vs packing.

The same code path as ``w2sr fit`` (``StudentModule`` + ``TraceDataModule`` + Lightning's ``Trainer``) on a random
model of a given shape, with synthetic traces of known token lengths, so that only the settings under test differ:

* ``--shape qwen2.5-0.5b``: the Qwen2.5-0.5B shape (hidden 896, 24 layers, 14/2 heads, MLP 4,864, vocabulary
  151,936, tied embeddings), QLoRA nf4 r=64 on all linear layers, bf16-mixed, gradient checkpointing, batch 8 x
  2,048 tokens: the setting of the issue's targets. Needs a CUDA GPU and bitsandbytes.
* ``--shape tiny``: a tiny Llama on the CPU, to check the script itself (figures meaningless).

Runs: ``loss=naive|chunked|liger`` on fixed 2,048-token traces (padding-free, so the loss is all that differs), then
``packing=false|true`` on a log-normal length mix of 200-4,096 tokens (same traces, same number of steps' worth of
target tokens). Each run reports tokens/s (all non-pad tokens), target tokens/s, padding share, peak GPU memory,
MFU (``w2sr.callbacks.Throughput``'s model-FLOPs definition against ``--peak_tflops``, the measured bf16 matmul
ceiling) and the pre-flight estimate of ``w2sr.training.memory`` for the same setting.

    python benchmarks/gpu_fit.py --shape qwen2.5-0.5b --out benchmarks/results/gpu_fit.json   # on a GPU (gpu_check.sh)
    python benchmarks/gpu_fit.py --shape tiny --steps 3 --warmup 1 --out /tmp/gpu_fit_cpu.json  # CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QWEN05 = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1e6,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
)
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=4096,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)


def build_model(folder: Path, shape: dict[str, Any], device: str) -> int:
    """A random-init Qwen2 model of ``shape`` plus the toy tokenizer (its ids are all < the vocabulary size)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from w2sr.toy import build_tokenizer, default_corpus

    tokenizer = build_tokenizer(default_corpus())
    config = Qwen2Config(
        **shape, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    gc.collect()
    return params


def write_traces(path: Path, lengths: list[int], seed: int) -> None:
    """Traces whose completions are ``n`` random digits (one token each with the toy tokenizer)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i, n in enumerate(lengths):
            completion = "".join(rng.choice("0123456789") for _ in range(n))
            record = {
                "id": f"p{i}",
                "problem": "What is 1+1?",
                "answer": "2",
                "source": "bench",
                "sample": 0,
                "teacher": "bench",
                "prompt": [{"role": "user", "content": "What is 1+1?"}],
                "completion": completion,
                "finish_reason": "stop",
                "completion_tokens": n,
            }
            f.write(json.dumps(record) + "\n")


def lognormal_lengths(count: int, seed: int, lo: int = 200, hi: int = 4096) -> list[int]:
    """A log-normal mix of trace lengths (median ~900 tokens), clipped to [lo, hi]: reasoning traces' shape."""
    rng = random.Random(seed)
    return [int(min(hi, max(lo, rng.lognormvariate(math.log(900), 0.7)))) for _ in range(count)]


class StepTimer:
    """Counts tokens as ``w2sr.callbacks.Throughput`` does and times the steps after ``warmup`` (CUDA synchronised)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.elapsed, self.peak_gib = warmup, None, 0.0, None
        self.totals = torch.zeros(4, dtype=torch.float64)  # tokens, targets, slots, attention context

    def callback(self) -> Any:
        from lightning.pytorch import Callback

        from w2sr.training.callbacks import Throughput

        timer = self

        class _Timer(Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):  # noqa: ANN001
                if trainer.global_step == timer.warmup and timer.start is None:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    timer.start = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):  # noqa: ANN001
                if timer.start is not None:
                    timer.totals += torch.tensor(Throughput._counts(batch), dtype=torch.float64)

            def on_train_end(self, trainer, module):  # noqa: ANN001
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if timer.start is not None:
                    timer.elapsed = time.perf_counter() - timer.start
                if torch.cuda.is_available():  # before the teardown moves the module off the GPU
                    timer.peak_gib = torch.cuda.max_memory_allocated() / 2**30

        return _Timer()


def run(
    name: str,
    model_dir: Path,
    traces: Path,
    work: Path,
    args: argparse.Namespace,
    *,
    loss: str,
    packing: bool,
    batch_size: int,
    max_seq_length: int,
) -> dict[str, Any]:
    import lightning as L

    from w2sr.training.datamodule import TraceDataModule
    from w2sr.training.loading import LoraOptions
    from w2sr.training.module import StudentModule

    cuda = args.device == "cuda"
    module = StudentModule(
        str(model_dir),
        finetune="lora",
        quantization="nf4" if cuda else "none",
        dtype="bfloat16" if cuda else "float32",
        gradient_checkpointing=True,
        lora=LoraOptions(r=64, alpha=128, dropout=0.0, target_modules="all-linear"),
        loss=loss,
        export_dir=str(work / f"export-{name}"),
        overwrite_export=True,
    )
    data = TraceDataModule(
        str(traces),
        tokenizer=str(model_dir),
        batch_size=batch_size,
        val_fraction=0.0,
        max_seq_length=max_seq_length,
        packing=packing,
        cache_dir=None,
    )
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision="bf16-mixed" if cuda else "32-true",
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer.callback()],
        default_root_dir=str(work / name),
    )
    trainer.fit(module, data)
    from w2sr.training.callbacks import Throughput

    metrics = Throughput(peak_tflops=args.peak_tflops if cuda else None)._metrics(
        module, timer.totals, timer.elapsed, 1
    )
    tokens, targets, slots, _ = timer.totals.tolist()
    result = {
        "name": name,
        "loss": module.loss_impl,
        "packing": packing,
        "batch_size": batch_size,
        "max_seq_length": max_seq_length,
        "steps_timed": args.steps,
        "seconds": round(timer.elapsed, 3),
        "tokens": int(tokens),
        "tokens_per_s": round(metrics["throughput/tokens_per_s"]),
        "target_tokens_per_s": round(metrics["throughput/target_tokens_per_s"]),
        "padding_share": round(metrics["throughput/padding_share"], 4),
        "tflops_per_s": round(metrics["throughput/tflops_per_s"], 1),
        "mfu": round(metrics["throughput/mfu"], 4) if "throughput/mfu" in metrics else None,
        "peak_gib": round(timer.peak_gib, 2) if timer.peak_gib is not None else None,
    }
    try:
        from w2sr.training import memory

        shape_obj = memory.ModelShape.from_config(json.loads((model_dir / "config.json").read_text()))
        plan = memory.Plan(
            finetune="lora",
            quantization="nf4" if cuda else "none",
            strategy="single",
            micro_batch=batch_size,
            seq_len=max_seq_length,
            checkpointing=True,
            lora_r=64,
            loss=module.loss_impl,
            loss_chunk=module.hparams.loss_chunk_size,
        )
        est = memory.estimate(shape_obj, plan)
        # torch's allocator peak does not include the CUDA context that the estimate's overhead term covers
        result["estimate_gib_without_overhead"] = round((est.total - est.overhead) / 2**30, 2)
    except Exception as err:  # noqa: BLE001 - the estimate is extra information, the run is the measurement
        result["estimate_error"] = repr(err)
    print(json.dumps(result), flush=True)
    del trainer, module, data
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["qwen2.5-0.5b", "tiny"], default="qwen2.5-0.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--losses", default="naive,chunked,liger")
    parser.add_argument("--peak_tflops", type=float, default=790.0, help="measured bf16 matmul ceiling (H100/H200)")
    parser.add_argument("--out", default="benchmarks/results/gpu_fit.json")
    parser.add_argument("--model_dir", default=None, help="keep the random model here (e.g. for generate_speed.py)")
    args = parser.parse_args()
    shape = QWEN05 if args.shape == "qwen2.5-0.5b" else TINY
    started = time.time()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="w2sr-gpu-fit-") as tmp:
        work = Path(tmp)
        model_dir = Path(args.model_dir) if args.model_dir else work / "model"
        params = build_model(model_dir, shape, args.device)
        n_fixed = args.batch_size * (args.warmup + args.steps)
        fixed = work / "fixed.jsonl"
        write_traces(fixed, [args.seq_len - 40] * n_fixed, seed=0)  # ~2,048 tokens with the chat template
        for loss in args.losses.split(","):
            if loss == "liger" and args.device != "cuda":
                continue
            try:
                results.append(
                    run(
                        f"loss-{loss}",
                        model_dir,
                        fixed,
                        work,
                        args,
                        loss=loss,
                        packing=False,
                        batch_size=args.batch_size,
                        max_seq_length=args.seq_len,
                    )
                )
            except Exception as err:  # noqa: BLE001 - record and go on to the next setting
                results.append({"name": f"loss-{loss}", "error": repr(err)})
                print(f"loss-{loss} failed: {err!r}", flush=True)
        # padding vs packing on a realistic mix, the same traces and the lean loss
        lean = "liger" if args.device == "cuda" else "chunked"
        mix = work / "mix.jsonl"
        write_traces(mix, lognormal_lengths(3 * (args.warmup + args.steps) * args.batch_size, seed=1), seed=1)
        for packing in (False, True):
            name = f"mix-{'packed' if packing else 'padded'}"
            try:
                results.append(
                    run(
                        name,
                        model_dir,
                        mix,
                        work,
                        args,
                        loss=lean,
                        packing=packing,
                        batch_size=args.batch_size // 2,
                        max_seq_length=4096,
                    )
                )
            except Exception as err:  # noqa: BLE001
                results.append({"name": name, "error": repr(err)})
                print(f"{name} failed: {err!r}", flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    out = {
        "command": "python " + " ".join(sys.argv),
        "device": device,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "shape": args.shape,
        "parameters": params,
        "results": results,
        "wall_s": round(time.time() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
