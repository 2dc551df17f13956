"""w2sr export --adapter: a LoRA adapter merged into its (bf16 or fp32) base gives the logits of base + adapter."""

from __future__ import annotations

import json

import pytest
import torch

from w2sr.cli import main
from w2sr.training.shards import SafetensorsShardWriter, staged_folder

QUIET = ["--trainer.logger", "false"]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model, tmp_path_factory):
    """A LoRA adapter over the tiny model with random non-zero B matrices (a fresh adapter is an identity)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from w2sr.training.loading import load_tokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    out = tmp_path_factory.mktemp("adapter") / "export"
    peft.save_pretrained(out)
    load_tokenizer(tiny_model).save_pretrained(out)
    (out / "w2sr_student.json").write_text(json.dumps({"base_model": tiny_model, "finetune": "lora"}))
    return out


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _reference(tiny_model, adapter_dir, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    base_logits = _logits(base, ids)
    return base_logits, _logits(PeftModel.from_pretrained(base, str(adapter_dir)), ids)


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-4), ("bfloat16", 0.04)])
def test_merged_model_matches_base_plus_adapter(tiny_model, adapter_dir, tmp_path, dtype, atol):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    main(["export", "--adapter", str(adapter_dir), "--output", str(out), "--dtype", dtype, *QUIET])
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    card = json.loads((out / "w2sr_student.json").read_text())
    assert card["finetune"] == "lora" and card["merged_from"] == {
        "adapter": str(adapter_dir),
        "base": tiny_model,
        "dtype": dtype,
        "base_quantization": "none",
    }
    AutoTokenizer.from_pretrained(out)
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    base_logits, want = _reference(tiny_model, adapter_dir, ids)
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == getattr(torch, dtype)  # config dtype written: loads in the merged dtype
    got = _logits(merged, ids)
    assert (want - base_logits).abs().max() > 20 * atol  # the adapter changes the model
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


def test_export_refuses_overwrite_and_adapter_folder_and_bad_input(tiny_model, adapter_dir, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    before = {p.name: p.read_bytes() for p in adapter_dir.iterdir()}
    for args in (
        ["--adapter", str(adapter_dir), "--output", str(out)],
        ["--adapter", str(adapter_dir), "--output", str(adapter_dir), "--overwrite", "true"],
        ["--adapter", str(tmp_path), "--output", str(tmp_path / "x")],
        ["--output", str(tmp_path / "y")],
    ):
        with pytest.raises(SystemExit) as err:
            main(["export", *args, *QUIET])
        assert err.value.code == 2, args
    assert (out / "keep.txt").read_text() == "precious" and not (tmp_path / "x").exists()
    assert {p.name: p.read_bytes() for p in adapter_dir.iterdir()} == before
    main(["export", "--adapter", str(adapter_dir), "--output", str(out), "--overwrite", "true", *QUIET])
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_staged_folder_keeps_old_output_when_export_fails(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out, overwrite=True) as staging:
        (staging / "half.bin").write_text("x")
        raise RuntimeError("crash mid-export")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "old.txt").read_text() == "old"


def test_shard_writer_splits_and_indexes(tmp_path):
    from safetensors.torch import load_file

    writer = SafetensorsShardWriter(tmp_path, max_shard_bytes=100)
    tensors = {f"t{i}": torch.full((10,), float(i)) for i in range(5)}  # 40 bytes each: 2 per shard
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    names = writer.close()
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 200 and index["weight_map"]["t4"] == names[2]
    loaded = {k: v for name in names for k, v in load_file(tmp_path / name).items()}
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items()) and len(loaded) == 5
    assert not list(tmp_path.glob(".*"))


def _greedy(model_path: str, adapter: str | None = None) -> list[str]:
    """Greedy completions as ``w2sr evaluate`` makes them on a CPU (``model.dtype: auto`` loads float32 weights)."""
    from w2sr.generation.base import SamplingOptions
    from w2sr.generation.hf import generate_completions
    from w2sr.records.prompts import build_messages, render_prompt
    from w2sr.training.module import StudentModule

    model, tokenizer = StudentModule(model_path, adapter_path=adapter).load_for_inference("cpu")
    prompts = [render_prompt(tokenizer, build_messages(f"What is {a} + {b}?")) for a, b in ((3, 4), (12, 30), (7, 7))]
    done = generate_completions(model, tokenizer, prompts, SamplingOptions(max_new_tokens=24, temperature=0.0))
    return [completion.text for [completion] in done]


@pytest.fixture(scope="module")
def float32_student(tiny_model, tmp_path_factory):
    """A LoRA student made in float32 whose card says so (as ``fit`` writes it), its adapter strong enough that
    bfloat16 rounding of the merged weights changes its greedy answers (B ~ N(0, 2): all 3 answers changed, while a
    float32 merge kept all 3)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from w2sr.training.loading import load_tokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 2.0)
    out = tmp_path_factory.mktemp("student") / "export"
    peft.save_pretrained(out)
    load_tokenizer(tiny_model).save_pretrained(out)
    card = {"base_model": tiny_model, "finetune": "lora", "quantization": "none", "dtype": "float32"}
    (out / "w2sr_student.json").write_text(json.dumps(card))
    return out


def test_merge_keeps_the_dtype_the_student_was_trained_in(tiny_model, float32_student, tmp_path, capsys):
    """Issue 28.2: without --dtype a float32 student is merged in float32 (its card's dtype), so the merged model's
    greedy answers are those of the base + adapter that was evaluated; the card records the dtype and its source."""
    from safetensors import safe_open

    out = tmp_path / "merged"
    main(["export", "--adapter", str(float32_student), "--output", str(out), *QUIET])
    assert "merging in float32" in capsys.readouterr().err
    card = json.loads((out / "w2sr_student.json").read_text())
    assert (card["dtype"], card["dtype_from"]) == ("float32", str(float32_student / "w2sr_student.json"))
    assert card["merged_from"]["dtype"] == "float32"
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float32}
    assert _greedy(str(out)) == _greedy(tiny_model, str(float32_student))


def test_merge_dtype_falls_back_to_the_base_config_and_yields_to_dtype(tiny_model, adapter_dir, tmp_path):
    """An adapter whose card has no dtype (made before issue 28) is merged in its base's config dtype; ``--dtype``
    still decides when given."""
    main(["export", "--adapter", str(adapter_dir), "--output", str(tmp_path / "merged"), *QUIET])
    card = json.loads((tmp_path / "merged" / "w2sr_student.json").read_text())
    assert (card["dtype"], card["dtype_from"]) == ("float32", f"{tiny_model} (config.json)")
    main(["export", "--adapter", str(adapter_dir), "--output", str(tmp_path / "bf16"), "--dtype", "bfloat16", *QUIET])
    card = json.loads((tmp_path / "bf16" / "w2sr_student.json").read_text())
    assert (card["dtype"], card["dtype_from"]) == ("bfloat16", "--dtype")


def test_exported_weight_files_follow_the_umask_like_the_other_files(adapter_dir, tmp_path):
    """Issue 28.6: safetensors writes its files 0600; every file of an export gets the umask's mode."""
    import os
    import stat

    out = tmp_path / "merged"
    main(["export", "--adapter", str(adapter_dir), "--output", str(out), "--dtype", "float32", *QUIET])
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert "model.safetensors" in modes and "config.json" in modes
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
