"""The training loss: token-weighted over an optimizer step (accumulation, DDP), and chunked == naive."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_traces

from w2sr.records.jsonl import InputError, write_jsonl
from w2sr.training.losses import resolve_loss_impl, token_nll_sum

PROBE = Path(__file__).resolve().parents[1] / "grads_probe.py"


def uneven_traces_file(path: Path, n: int = 16) -> Path:
    """Traces whose completions differ up to 6x in length, so a per-micro-batch mean would weigh tokens unequally."""
    traces = [
        dataclasses.replace(t, completion=" ".join([t.completion] * (1 + 5 * (i % 2) + i % 3)))
        for i, t in enumerate(make_traces(n))
    ]
    write_jsonl(path, (t.to_dict() for t in traces))
    return path


def assert_same_grads(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def test_accumulation_of_single_examples_equals_one_batch(tiny_model, tmp_path):
    sys.path.insert(0, str(PROBE.parent))
    from grads_probe import first_step_grads

    traces = str(uneven_traces_file(tmp_path / "t.jsonl"))
    one = first_step_grads(tiny_model, traces, str(tmp_path / "a"), batch_size=4, accumulate=1)
    accumulated = first_step_grads(tiny_model, traces, str(tmp_path / "b"), batch_size=1, accumulate=4)
    assert_same_grads(one, accumulated)


@pytest.mark.slow
def test_two_ddp_ranks_equal_one_rank(tiny_model, tmp_path):
    """2 gloo ranks x accumulation 2 x micro-batch 1 == 1 rank x micro-batch 4 (the same 4 examples)."""
    sys.path.insert(0, str(PROBE.parent))
    from grads_probe import first_step_grads

    traces = str(uneven_traces_file(tmp_path / "t.jsonl"))
    (tmp_path / "ddp").mkdir()
    out = tmp_path / "ddp" / "grads.pt"
    run = subprocess.run(
        [
            sys.executable,
            str(PROBE),
            tiny_model,
            traces,
            str(out),
            "--devices",
            "2",
            "--batch_size",
            "1",
            "--accumulate",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    single = first_step_grads(tiny_model, traces, str(tmp_path / "one"), batch_size=4, accumulate=1)
    assert_same_grads(single, torch.load(out))


def _student(tiny_model: str, finetune: str):
    from w2sr.training.loading import LoraOptions
    from w2sr.training.module import StudentModule

    torch.manual_seed(0)
    module = StudentModule(
        model_name_or_path=tiny_model, finetune=finetune, dtype="float32", lora=LoraOptions(r=4, alpha=8, dropout=0.0)
    )
    module.configure_model()
    if finetune == "lora":  # LoRA B starts at zero: move it so the adapter's gradients flow everywhere
        with torch.no_grad():
            for name, p in module.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
    return module.model


def _batch(tiny_tokenizer):
    from w2sr.training.datamodule import PadCollator, tokenize_trace

    examples = [tokenize_trace(tiny_tokenizer, t) for t in make_traces(3)]
    return PadCollator(tiny_tokenizer.pad_token_id)(examples)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_chunked_loss_and_grads_equal_naive(tiny_model, tiny_tokenizer, finetune):
    model = _student(tiny_model, finetune)
    batch = _batch(tiny_tokenizer)
    results = {}
    for impl, chunk in (("naive", 0), ("chunked", 7)):  # 7: chunks cut across rows and end on a partial chunk
        model.zero_grad()
        total, tokens = token_nll_sum(model, batch, impl, chunk_size=chunk or 1024)
        (total / tokens).backward()
        results[impl] = (
            total.detach(),
            int(tokens),
            {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad},
        )
    (naive, n_tokens, naive_grads), (chunked, c_tokens, chunked_grads) = results["naive"], results["chunked"]
    assert n_tokens == c_tokens == sum(int((batch["labels"][i, 1:] != -100).sum()) for i in range(3))
    torch.testing.assert_close(chunked, naive, rtol=1e-5, atol=1e-4)
    # HF's own mean loss agrees with ours
    hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(naive / n_tokens, hf.float(), rtol=1e-5, atol=1e-5)
    assert all(g.abs().sum() > 0 for g in naive_grads.values())
    assert_same_grads(naive_grads, chunked_grads, rtol=1e-4, atol=1e-6)


def test_loss_choice_resolves_and_refuses_missing_liger(monkeypatch):
    assert resolve_loss_impl("auto", "cpu") == "chunked"
    assert resolve_loss_impl("naive", "cpu") == "naive"
    monkeypatch.setattr("w2sr.training.losses.liger_available", lambda: False)
    assert resolve_loss_impl("auto", "cuda") == "chunked"
    with pytest.raises(InputError, match="liger-kernel"):
        resolve_loss_impl("liger", "cuda")
    with pytest.raises(InputError, match="model.loss"):
        resolve_loss_impl("fused", "cpu")
    monkeypatch.setattr("w2sr.training.losses.liger_available", lambda: True)
    assert resolve_loss_impl("auto", "cuda") == "liger"
    assert resolve_loss_impl("auto", "cpu") == "chunked"


def test_liger_missing_is_an_exit_2_error(tiny_model, traces_file, tmp_path, monkeypatch):
    from w2sr.training.module import StudentModule

    with pytest.raises(InputError, match="model.loss"):
        StudentModule(model_name_or_path=tiny_model, loss="fused")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_liger_equals_naive_on_gpu(tiny_model, tiny_tokenizer):
    pytest.importorskip("liger_kernel")
    model = _student(tiny_model, "lora").cuda()
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in _batch(tiny_tokenizer).items()}
    naive, _ = token_nll_sum(model, batch, "naive")
    liger, _ = token_nll_sum(model, batch, "liger")
    torch.testing.assert_close(liger, naive, rtol=1e-3, atol=1e-2)
