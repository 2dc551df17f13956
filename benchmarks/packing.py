"""Target tokens/s with packing vs padding: the same model, examples and loss; only the batching differs.

Examples have log-normal lengths clipped to 200-4,096 tokens (median ~900, like teacher traces), a 100-token
masked prompt and random token ids. ``padded``: random micro-batches of 4 examples, right-padded (``data.packing:
false``). ``packed``: rows of at most 4,096 tokens filled by first-fit decreasing, one row per micro-batch
(``data.packing: true``). Both run one epoch of forward + backward + AdamW on a small Llama (CPU, float32,
``model.loss: chunked``) through ``w2sr.training.batching`` and ``w2sr.training.losses``, as ``w2sr fit`` does. Writes
``benchmarks/results/packing.json``. Run from the repository root: ``python benchmarks/packing.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "packing.json"


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from w2sr.training.batching import BatchCollator, PlannedDataset, StepPlanSampler
    from w2sr.training.datamodule import Example
    from w2sr.training.losses import token_nll_sum

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max_seq_length", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=4, help="examples per padded micro-batch")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--attn", default="sdpa_varlen", choices=["sdpa_varlen", "sdpa", "eager"])
    args = parser.parse_args()
    from w2sr.training.attention import register

    register()

    rng = random.Random(0)
    lengths = [min(args.max_seq_length, max(200, int(rng.lognormvariate(6.8, 0.8)))) for _ in range(args.examples)]
    examples = []
    for n in lengths:
        ids = [rng.randrange(args.vocab) for _ in range(n)]
        examples.append(Example(ids, [-100] * 100 + ids[100:], "p", ""))
    targets = [e.num_targets for e in examples]
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=args.hidden // 4,
        max_position_embeddings=args.max_seq_length,
        attn_implementation=args.attn,
    )
    runs = {}
    for mode in ("padded", "packed"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).float().train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        packing = mode == "packed"
        sampler = StepPlanSampler(
            lengths,
            targets,
            batch_size=1 if packing else args.batch_size,
            seed=0,
            packing=packing,
            max_seq_length=args.max_seq_length,
        )
        dataset, collate = PlannedDataset(examples), BatchCollator(0, packing=packing)
        batches = [collate(dataset[mb]) for mb in sampler]
        slots = sum(b["input_ids"].numel() for b in batches)
        started = time.perf_counter()
        seen = 0
        for batch in batches:
            total, tokens = token_nll_sum(model, batch, "chunked")
            (total / batch["step_tokens"]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += int(tokens)
        seconds = time.perf_counter() - started
        assert seen == sum(targets)
        runs[mode] = {
            "micro_batches": len(batches),
            "token_slots": slots,
            "real_tokens": sum(lengths),
            "target_tokens": seen,
            "padding_share": round(1 - sum(lengths) / slots, 4),
            "seconds": round(seconds, 2),
            "target_tokens_per_s": round(seen / seconds, 1),
        }
        print(mode, runs[mode], flush=True)
    speedup = runs["packed"]["target_tokens_per_s"] / runs["padded"]["target_tokens_per_s"]
    result = {
        "command": "python benchmarks/packing.py " + " ".join(sys.argv[1:]),
        "setup": {
            **vars(args),
            "length_distribution": "lognormal(mu=6.8, sigma=0.8) clipped to [200, max_seq_length]",
            "lengths": {
                "min": min(lengths),
                "median": sorted(lengths)[len(lengths) // 2],
                "max": max(lengths),
                "total": sum(lengths),
            },
            "attention": args.attn,
            "loss": "chunked",
            "dtype": "float32",
            "device": "cpu",
        },
        "runs": runs,
        "packed_over_padded_target_tokens_per_s": round(speedup, 3),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"packed / padded target tokens/s: {speedup:.2f}; written to {OUT}")


if __name__ == "__main__":
    main()
