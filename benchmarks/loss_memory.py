"""Peak memory of the training loss: ``naive`` (full float32 logits) vs ``chunked`` (w2sr.training.losses), on the CPU.

A one-layer Llama with the paper student's vocabulary (151,936) and a tiny hidden size, one forward + backward on
4 x 2,048 tokens (all completion tokens but a 64-token prompt per row). Each implementation runs in its own fresh
process and reports its peak resident set size (``ru_maxrss``) minus the RSS after the model and batch were built,
so the figure is the memory the loss step itself needed. Also records the loss of each (they must agree) and the
seconds. Writes ``benchmarks/results/loss_memory.json``. Run from the repository root:
``python benchmarks/loss_memory.py`` (needs ~12 GB free for ``naive``; it refuses to start with less).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "loss_memory.json"


def rss_gib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def child(impl: str, batch: int, seq: int, vocab: int, hidden: int, chunk: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from w2sr.training.losses import token_nll_sum

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=hidden // 2,
        max_position_embeddings=seq,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).float().train()
    ids = torch.randint(0, vocab, (batch, seq))
    labels = ids.clone()
    labels[:, :64] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    base = rss_gib()
    started = time.perf_counter()
    total, tokens = token_nll_sum(model, inputs, impl, chunk_size=chunk)
    (total / tokens).backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    return {
        "impl": impl,
        "loss": float(total / tokens),
        "target_tokens": int(tokens),
        "seconds": round(seconds, 2),
        "rss_before_gib": round(base, 3),
        "peak_rss_gib": round(peak, 3),
        "loss_step_peak_gib": round(peak - base, 3),
    }


def available_gib() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--child", choices=["naive", "chunked"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.seq, args.vocab, args.hidden, args.chunk)))
        return
    logits_gib = args.batch * args.seq * args.vocab * 4 / 2**30
    if available_gib() < 2.5 * logits_gib:
        sys.exit(f"needs ~{2.5 * logits_gib:.0f} GiB free for the naive loss; {available_gib():.1f} GiB available")
    runs = {}
    for impl in ("chunked", "naive"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            impl,
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
            "--vocab",
            str(args.vocab),
            "--hidden",
            str(args.hidden),
            "--chunk",
            str(args.chunk),
        ]
        out = subprocess.run(
            cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        runs[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        print(runs[impl], flush=True)
    ratio = runs["chunked"]["loss_step_peak_gib"] / runs["naive"]["loss_step_peak_gib"]
    result = {
        "command": "python benchmarks/loss_memory.py " + " ".join(sys.argv[1:]),
        "shape": {
            "batch": args.batch,
            "seq": args.seq,
            "vocab": args.vocab,
            "hidden": args.hidden,
            "layers": 1,
            "chunk_size": args.chunk,
            "dtype": "float32",
        },
        "full_fp32_logits_gib": round(logits_gib, 3),
        "runs": runs,
        "chunked_over_naive_peak": round(ratio, 4),
        "loss_abs_diff": abs(runs["chunked"]["loss"] - runs["naive"]["loss"]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"chunked / naive peak memory of the loss step: {ratio:.3f}; written to {OUT}")


if __name__ == "__main__":
    main()
