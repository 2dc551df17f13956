"""GPU-only checks (marked ``gpu``; skipped without CUDA): QLoRA nf4 on a Qwen2.5-0.5B-shaped random model in
bf16-mixed, whose saved adapter reloads with identical outputs, and ``w2sr generate`` / ``w2sr evaluate`` on the GPU.

Run by ``benchmarks/gpu_check.sh`` on a GPU machine (``pytest -m gpu``); the sharded (FSDP) GPU tests live in
``tests/training/test_sharded.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from w2sr.records.jsonl import read_jsonl, write_jsonl

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

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


@pytest.fixture(scope="module")
def qwen05(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-init model of the Qwen2.5-0.5B shape (494M parameters) with the toy tokenizer and chat template."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from w2sr.toy import IM_END, build_tokenizer, default_corpus

    folder = tmp_path_factory.mktemp("qwen05")
    tokenizer = build_tokenizer(default_corpus())
    config = Qwen2Config(
        **QWEN05, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END), pad_token_id=tokenizer.pad_token_id
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return str(folder)


def test_qlora_nf4_fit_bf16_mixed_adapter_reloads_with_identical_outputs(qwen05, traces_file, tmp_path):
    pytest.importorskip("bitsandbytes")
    import lightning as L

    from w2sr.training.datamodule import TraceDataModule
    from w2sr.training.loading import LoraOptions
    from w2sr.training.module import StudentModule

    export = tmp_path / "export"
    module = StudentModule(
        qwen05,
        finetune="lora",
        quantization="nf4",
        dtype="bfloat16",
        gradient_checkpointing=True,
        lora=LoraOptions(r=64, alpha=128, dropout=0.0),
        export_dir=str(export),
    )
    data = TraceDataModule(str(traces_file), tokenizer=qwen05, batch_size=4, val_fraction=0.0, cache_dir=None)
    ids = torch.tensor([list(range(5, 69))], device="cuda")
    seen: dict[str, torch.Tensor] = {}

    class TrainedLogits(L.Callback):
        """The trained model's logits, taken before Lightning's teardown moves the module off the GPU."""

        def on_train_end(self, trainer, pl_module):  # noqa: ANN001
            pl_module.model.eval()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                seen["logits"] = pl_module.model(input_ids=ids).logits.float()
            seen["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30

    trainer = L.Trainer(
        max_steps=4,
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
        callbacks=[TrainedLogits()],
    )
    module.configure_model()
    before = {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any("4bit" in type(m).__name__ for m in module.model.modules())
    after = dict(module.named_parameters())
    assert any(not torch.equal(after[n].detach().cpu(), v) for n, v in before.items())  # the adapter learned
    assert (export / "adapter_model.safetensors").is_file()
    trained = seen["logits"]
    reloaded_model, _ = StudentModule(
        qwen05, adapter_path=str(export), quantization="nf4", dtype="bfloat16"
    ).load_for_inference("cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        reloaded = reloaded_model(input_ids=ids).logits.float()
    base_model, _ = StudentModule(qwen05, quantization="nf4", dtype="bfloat16").load_for_inference("cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        base = base_model(input_ids=ids).logits.float()
    assert torch.allclose(trained, reloaded, atol=1e-2, rtol=0), (trained - reloaded).abs().max()
    assert (trained - base).abs().max() > 10 * (trained - reloaded).abs().max()  # the adapter is what was reloaded


def test_generate_and_evaluate_on_the_gpu(tiny_model, tmp_path):
    from w2sr.cli import main
    from w2sr.toy import make_problems

    problems = tmp_path / "problems.jsonl"
    write_jsonl(problems, (p.to_dict() for p in make_problems(12, 7, "test")))
    gpu = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.logger", "false"]
    main(
        [
            "generate",
            "--model.model_name_or_path",
            tiny_model,
            "--problems",
            str(problems),
            "--output",
            str(tmp_path / "traces.jsonl"),
            "--sampling.max_new_tokens",
            "32",
            *gpu,
        ]
    )
    traces = read_jsonl(tmp_path / "traces.jsonl")
    assert len(traces) == 12 and {t["finish_reason"] for t in traces} <= {"stop", "length"}
    card = json.loads(Path(f"{tmp_path / 'traces.jsonl'}.card.json").read_text())
    assert card["complete"] and card["samples"] == 12 and card["tokens_generated"] > 0
    main(
        [
            "evaluate",
            "--model.model_name_or_path",
            tiny_model,
            "--problems",
            str(problems),
            "--output_dir",
            str(tmp_path / "eval"),
            "--sampling.max_new_tokens",
            "32",
            *gpu,
        ]
    )
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    (row,) = results["benchmarks"].values()
    assert row["problems"] == 12 and row["avg@n"] is not None
    assert len(read_jsonl(tmp_path / "eval" / "predictions.jsonl")) == 12
