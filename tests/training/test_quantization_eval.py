"""QLoRA students are evaluated and merged against the base they were trained on.

``model.quantization: auto`` (the default) reads the adapter's student card ``w2sr_student.json``: a QLoRA adapter is
evaluated on its NF4 base (refused with exit 2 on a machine without CUDA, naming ``--model.quantization``), and
``--model.quantization none`` chooses the bf16 base explicitly; results.json and the generation card record which.
``w2sr export --base_quantization nf4`` merges into the dequantized NF4 base (checked here on bitsandbytes' CPU
backend, and on a GPU by the ``gpu`` tests). Run: ``pytest tests/training/test_quantization_eval.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

from w2sr.cli import main
from w2sr.records.jsonl import InputError, write_jsonl

QUIET = ["--trainer.accelerator", "cpu", "--trainer.logger", "false"]


def _adapter(tiny_model: str, folder, quantization: str | None) -> str:
    """A LoRA adapter of the tiny model with non-zero B matrices, its tokenizer and a student card."""
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
    peft.save_pretrained(folder)
    load_tokenizer(tiny_model).save_pretrained(folder)
    card = {"base_model": tiny_model, "finetune": "lora", "lora": {"r": 4}}
    if quantization is not None:
        card["quantization"] = quantization
    (folder / "w2sr_student.json").write_text(json.dumps(card))
    return str(folder)


@pytest.fixture(scope="module")
def qlora_adapter(tiny_model, tmp_path_factory) -> str:
    """As ``fit`` exports a QLoRA run: the card says ``quantization: nf4``."""
    return _adapter(tiny_model, tmp_path_factory.mktemp("qlora") / "export", "nf4")


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    from w2sr.toy import make_problems

    path = tmp_path_factory.mktemp("problems") / "problems.jsonl"
    write_jsonl(path, (p.to_dict() for p in make_problems(3, 7, "test")))
    return path


def _exit(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as err:
        main(args)
    return err.value.code, " ".join(capsys.readouterr().err.split())


# --------------------------------------------------------------------------------------------- the default
def test_the_student_card_decides_the_default(tiny_model, qlora_adapter, tmp_path):
    from w2sr.training.loading import FROM_CARD, card_quantization, resolve_quantization
    from w2sr.training.module import StudentModule

    lora = _adapter(tiny_model, tmp_path / "lora", "none")
    old = _adapter(tiny_model, tmp_path / "old", None)  # a card written before quantization was recorded
    assert card_quantization(qlora_adapter) == "nf4" and card_quantization(lora) == "none"
    assert card_quantization(old) is None and card_quantization(None) is None
    assert card_quantization(str(tmp_path / "missing")) is None and card_quantization("org/hub-adapter") is None
    assert resolve_quantization("auto", qlora_adapter) == ("nf4", FROM_CARD)
    assert resolve_quantization(None, qlora_adapter) == ("nf4", FROM_CARD)
    assert resolve_quantization("none", qlora_adapter) == ("none", "model.quantization")  # given beats the card
    assert resolve_quantization("auto", lora) == ("none", FROM_CARD)
    assert resolve_quantization("auto", old) == ("none", "default")
    assert resolve_quantization("auto", None) == ("none", "default")  # fit without an adapter: as before
    assert resolve_quantization("nf4", None) == ("nf4", "model.quantization")
    module = StudentModule(tiny_model, adapter_path=qlora_adapter)
    assert module.hparams.quantization == "nf4" and module.quantization_source == FROM_CARD
    assert StudentModule(tiny_model, adapter_path=qlora_adapter, quantization="none").hparams.quantization == "none"
    assert StudentModule(tiny_model).hparams.quantization == "none"  # the fit default: never "auto" in a card
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "w2sr_student.json").write_text("{not json")
    with pytest.raises(InputError, match="malformed student card"):
        card_quantization(str(bad))
    (bad / "w2sr_student.json").write_text(json.dumps({"quantization": "int8"}))
    with pytest.raises(InputError, match="unknown quantization 'int8'"):
        resolve_quantization("auto", str(bad))


def test_qlora_adapter_on_a_cpu_is_refused_naming_the_option(
    tiny_model, qlora_adapter, problems, tmp_path, capsys, monkeypatch
):
    """Today's bug: the adapter trained against NF4 weights was silently scored on the bf16 base."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "eval"
    code, message = _exit(
        [
            "evaluate",
            "--model.model_name_or_path",
            tiny_model,
            "--model.adapter_path",
            qlora_adapter,
            "--problems",
            str(problems),
            "--output_dir",
            str(out),
            *QUIET,
        ],
        capsys,
    )
    assert code == 2 and "model.quantization" in message and "w2sr_student.json" in message, message
    assert "--model.quantization none" in message and not out.exists()


def test_quantization_none_evaluates_on_the_bf16_base_and_results_say_so(tiny_model, qlora_adapter, problems, tmp_path):
    common = [
        "--model.model_name_or_path",
        tiny_model,
        "--problems",
        str(problems),
        "--limit",
        "2",
        "--sampling.max_new_tokens",
        "6",
        *QUIET,
    ]
    main(
        [
            "evaluate",
            "--model.adapter_path",
            qlora_adapter,
            "--model.quantization",
            "none",
            "--output_dir",
            str(tmp_path / "bf16"),
            *common,
        ]
    )
    main(["evaluate", "--output_dir", str(tmp_path / "base"), *common])  # no adapter: auto -> none
    for name in ("bf16", "base"):
        results = json.loads((tmp_path / name / "results.json").read_text())
        card = json.loads((tmp_path / name / "predictions.jsonl.card.json").read_text())
        assert results["quantization"] == "none" and card["quantization"] == "none", name
    assert json.loads((tmp_path / "bf16" / "results.json").read_text())["adapter"] == qlora_adapter


def test_score_only_results_have_the_key(tmp_path):
    source = tmp_path / "preds.jsonl"
    write_jsonl(source, [{"id": "1", "completion": "\\boxed{2}", "answer": "2"}])
    main(["evaluate", "--predictions", str(source), "--output_dir", str(tmp_path / "s"), *QUIET])
    assert json.loads((tmp_path / "s" / "results.json").read_text())["quantization"] is None  # no model loaded


def test_generation_card_records_and_fingerprints_the_quantization(tmp_path):
    from w2sr.generation.base import SamplingOptions
    from w2sr.generation.card import (
        GenerationStats,
        build_card,
        check_same_settings,
        fingerprint,
        generation_settings,
        write_card,
    )
    from w2sr.records.prompts import PromptOptions

    def settings(quantization):
        return generation_settings(
            model="m",
            adapter="a",
            backend="hf",
            prompt=PromptOptions(),
            sampling=SamplingOptions(),
            quantization=quantization,
        )

    legacy = {k: v for k, v in settings(None).items() if k != "quantization"}
    assert fingerprint(settings("none")) == fingerprint(legacy) == fingerprint(settings(None))  # old cards resume
    assert fingerprint(settings("nf4")) != fingerprint(settings("none"))
    output = tmp_path / "traces.jsonl"
    write_card(output, build_card(settings("nf4"), SamplingOptions(), GenerationStats(), complete=False))
    assert json.loads((tmp_path / "traces.jsonl.card.json").read_text())["quantization"] == "nf4"
    check_same_settings(output, settings("nf4"))
    with pytest.raises(InputError, match='quantization: file has "nf4", now "none"'):
        check_same_settings(output, settings("none"))


# ------------------------------------------------------------------------------------------------- export
def test_export_nf4_on_a_cpu_is_refused_before_loading(qlora_adapter, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, message = _exit(
        ["export", "--adapter", qlora_adapter, "--output", str(tmp_path / "m"), "--base_quantization", "nf4", *QUIET],
        capsys,
    )
    assert code == 2 and "--base_quantization" in message and "CUDA" in message and not (tmp_path / "m").exists()
    code, message = _exit(
        [
            "export",
            "--checkpoint",
            str(tmp_path),
            "--output",
            str(tmp_path / "m"),
            "--base_quantization",
            "nf4",
            *QUIET,
        ],
        capsys,
    )
    assert code == 2 and "--base_quantization" in message


def test_default_export_of_a_qlora_adapter_says_which_base(qlora_adapter, tmp_path, capsys):
    out = tmp_path / "merged"
    main(["export", "--adapter", qlora_adapter, "--output", str(out), *QUIET])
    card = json.loads((out / "w2sr_student.json").read_text())
    assert card["quantization"] == "nf4" and card["merged_from"]["base_quantization"] == "none"
    assert "--base_quantization nf4" in " ".join(capsys.readouterr().err.split())


def _linear_weights(model) -> dict[str, torch.Tensor]:
    return {
        name: module.weight.detach().float().cpu()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name
    }


def _lora_deltas(adapter: str) -> dict[str, torch.Tensor]:
    """scale * B @ A per adapted linear layer, from the adapter's own files."""
    from safetensors.torch import load_file

    config = json.loads(open(f"{adapter}/adapter_config.json").read())
    tensors = load_file(f"{adapter}/adapter_model.safetensors")
    scale = config["lora_alpha"] / config["r"]
    out = {}
    for key, a in tensors.items():
        if key.endswith("lora_A.weight"):
            name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            out[name] = scale * tensors[key.replace("lora_A", "lora_B")].float() @ a.float()
    return out


def test_nf4_merge_equals_the_dequantized_nf4_base_plus_the_adapter(tiny_model, qlora_adapter, tmp_path):
    """The merged weights are what the adapter was trained against (bitsandbytes' CPU backend: same NF4 code)."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from w2sr.training.export import merge_adapter
    from w2sr.training.loading import load_dequantized_nf4

    try:
        dequantized = _linear_weights(load_dequantized_nf4(tiny_model, torch.bfloat16, device="cpu"))
    except Exception as err:  # noqa: BLE001 - an install without bitsandbytes' CPU backend
        pytest.skip(f"bitsandbytes cannot quantize on the CPU here: {err}")
    plain = _linear_weights(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16))
    deltas = _lora_deltas(qlora_adapter)
    assert len(deltas) >= 7 and set(deltas) <= set(dequantized)
    out = merge_adapter(qlora_adapter, str(tmp_path / "nf4"), base_quantization="nf4", device="cpu")
    merged = _linear_weights(AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16))
    card = json.loads((out / "w2sr_student.json").read_text())
    assert card["merged_from"]["base_quantization"] == "nf4"
    assert not (out / "config.json").read_text().count("quantization_config")  # a plain bf16 model folder
    for name, delta in deltas.items():
        want = (dequantized[name] + delta).to(torch.bfloat16).float()
        torch.testing.assert_close(merged[name], want, atol=2e-2, rtol=2e-2)
        # NF4 rounding moves the base weights by far more than the bf16 merge tolerance
        assert (dequantized[name] - plain[name]).abs().max() > 1e-3
    worst_nf4 = max((merged[n] - (dequantized[n] + d)).abs().max().item() for n, d in deltas.items())
    worst_bf16 = max((merged[n] - (plain[n] + d)).abs().max().item() for n, d in deltas.items())
    assert worst_nf4 < worst_bf16  # closer to the NF4 base + adapter than to the bf16 base + adapter


# ------------------------------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_evaluate_qlora_defaults_to_nf4_and_records_it(tiny_model, qlora_adapter, problems, tmp_path):
    pytest.importorskip("bitsandbytes")
    from w2sr.training.module import StudentModule

    model, _ = StudentModule(tiny_model, adapter_path=qlora_adapter, dtype="bfloat16").load_for_inference("cuda")
    assert any("4bit" in type(m).__name__ for m in model.modules())  # the default is the card's NF4 base
    gpu = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.logger", "false"]
    common = [
        "--model.model_name_or_path",
        tiny_model,
        "--model.adapter_path",
        qlora_adapter,
        "--model.dtype",
        "bfloat16",
        "--problems",
        str(problems),
        "--sampling.max_new_tokens",
        "8",
        *gpu,
    ]
    main(["evaluate", "--output_dir", str(tmp_path / "nf4"), *common])
    main(["evaluate", "--output_dir", str(tmp_path / "bf16"), "--model.quantization", "none", *common])
    for name in ("nf4", "bf16"):
        results = json.loads((tmp_path / name / "results.json").read_text())
        card = json.loads((tmp_path / name / "predictions.jsonl.card.json").read_text())
        assert results["quantization"] == card["quantization"] == ("nf4" if name == "nf4" else "none")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_export_nf4_merge_gives_the_logits_of_the_nf4_base_plus_adapter(tiny_model, qlora_adapter, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from w2sr.training.module import StudentModule

    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0)).cuda()
    trained, _ = StudentModule(tiny_model, adapter_path=qlora_adapter, dtype="bfloat16").load_for_inference("cuda")
    with torch.no_grad():
        want = trained(input_ids=ids).logits.float()
    main(
        [
            "export",
            "--adapter",
            qlora_adapter,
            "--output",
            str(tmp_path / "nf4"),
            "--base_quantization",
            "nf4",
            "--trainer.logger",
            "false",
        ]
    )
    main(["export", "--adapter", qlora_adapter, "--output", str(tmp_path / "bf16"), "--trainer.logger", "false"])
    errors = {}
    for name in ("nf4", "bf16"):
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / name, dtype=torch.bfloat16).cuda()
        with torch.no_grad():
            errors[name] = (merged(input_ids=ids).logits.float() - want).abs().max().item()
    assert errors["nf4"] < errors["bf16"], errors  # the NF4 merge is the model that was trained
