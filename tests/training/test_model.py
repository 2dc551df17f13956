"""StudentModule: LoRA / full fine-tuning, trainable-only checkpoints, export, adapters at inference, QLoRA on GPU."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from w2sr.records.jsonl import InputError
from w2sr.training.datamodule import TraceDataModule
from w2sr.training.loading import LoraOptions
from w2sr.training.module import StudentModule


def fit(module, traces_file, tiny_model, root, steps=3, **trainer_kwargs):
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, batch_size=4, val_fraction=0.2)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(root),
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(module, dm)
    return trainer


def test_lora_trains_only_the_adapter_and_checkpoints_are_small(traces_file, tiny_model, tmp_path):
    module = StudentModule(
        tiny_model, finetune="lora", lora=LoraOptions(r=4, alpha=8), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2)
    )
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = fit(module, traces_file, tiny_model, tmp_path / "run")
    changed = {n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert module.model.training  # the HF model is in train mode (dropout, gradient checkpointing work)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)
    # resume: a fresh module loads the adapter-only checkpoint (strict loading off)
    fresh = StudentModule(tiny_model, finetune="lora", lora=LoraOptions(r=4, alpha=8))
    fresh.configure_model()
    fresh.load_state_dict(state, strict=False)
    for name, value in state.items():
        assert torch.equal(dict(fresh.named_parameters())[name].detach(), value)


def test_export_refuses_to_clobber_and_adapter_changes_outputs(traces_file, tiny_model, tmp_path):
    module = StudentModule(
        tiny_model,
        finetune="lora",
        lora=LoraOptions(r=4, alpha=8),
        export_dir=str(tmp_path / "ex"),
        optimizer=lambda p: torch.optim.AdamW(p, lr=5e-2),
    )
    fit(module, traces_file, tiny_model, tmp_path / "run", steps=4)
    assert (tmp_path / "ex" / "adapter_config.json").is_file() and (tmp_path / "ex" / "w2sr_student.json").is_file()
    again = StudentModule(tiny_model, export_dir=str(tmp_path / "ex"))
    with pytest.raises(InputError, match="overwrite_export"):
        fit(again, traces_file, tiny_model, tmp_path / "run2", steps=1)
    base, tokenizer = StudentModule(tiny_model).load_for_inference("cpu")
    adapted, _ = StudentModule(tiny_model, adapter_path=str(tmp_path / "ex")).load_for_inference("cpu")
    ids = tokenizer("Compute 12 + 34 - 5.", return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(base(**ids).logits, adapted(**ids).logits)


def test_full_finetune_exports_a_loadable_model(traces_file, tiny_model, tmp_path):
    module = StudentModule(tiny_model, finetune="full", export_dir=str(tmp_path / "ex"))
    fit(module, traces_file, tiny_model, tmp_path / "run", steps=2)
    model, _ = StudentModule(str(tmp_path / "ex")).load_for_inference("cpu")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_configure_model_is_idempotent_and_requires_a_model(tiny_model):
    module = StudentModule(tiny_model)
    module.configure_model()
    first = module.model
    module.configure_model()
    assert module.model is first
    with pytest.raises(InputError, match="model.model_name_or_path"):
        StudentModule().configure_model()


def test_nf4_needs_cuda_on_cpu(tiny_model):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(InputError, match="CUDA"):
        StudentModule(tiny_model, quantization="nf4").configure_model()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_qlora_nf4_fit_on_gpu(traces_file, tiny_model, tmp_path):
    pytest.importorskip("bitsandbytes")
    module = StudentModule(
        tiny_model,
        finetune="lora",
        quantization="nf4",
        dtype="bfloat16",
        gradient_checkpointing=True,
        export_dir=str(tmp_path / "ex"),
    )
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, batch_size=4, val_fraction=0.2)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer.fit(module, dm)
    assert (tmp_path / "ex" / "adapter_model.safetensors").is_file()
    assert any("4bit" in type(m).__name__ for m in module.model.modules())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    after = dict(module.named_parameters())
    assert any(not torch.equal(after[n].detach().cpu(), v.cpu()) for n, v in before.items())  # the adapter learned


def test_full_finetuning_keeps_float32_master_weights():
    from w2sr.training.loading import resolve_dtype

    assert resolve_dtype("auto", full_finetune=True) == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(InputError, match="model.dtype"):
        resolve_dtype("fp8")


def test_checkpoint_from_other_lora_settings_is_refused(traces_file, tiny_model, tmp_path):
    module = StudentModule(tiny_model, lora=LoraOptions(r=4, target_modules=["q_proj"]))
    trainer = fit(module, traces_file, tiny_model, tmp_path / "run", steps=1)
    trainer.save_checkpoint(tmp_path / "q.ckpt")
    other = StudentModule(tiny_model, lora=LoraOptions(r=4, target_modules=["v_proj"]))
    other.configure_model()
    with pytest.raises(InputError, match="trainable weights"):
        other.on_load_checkpoint(torch.load(tmp_path / "q.ckpt", weights_only=False))
