"""README promises about training, each checked by value: prompt masking, the ``w2sr test`` loss, the export holds
the trained weights (and survives an interrupted save), gradient checkpointing really recomputes, the optimizer
gets only trainable parameters, LoRA wraps every linear layer but the LM head, ``trust_remote_code`` is off.

Expected values are computed here without w2sr where possible: prompts with the tokenizer's own chat template, the
NLL with plain ``transformers``, the linear layers from a plain ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import make_traces

from w2sr.cli import main
from w2sr.records.jsonl import write_jsonl
from w2sr.training.datamodule import IGNORE_INDEX, PadCollator, TraceDataModule
from w2sr.training.loading import LoraOptions
from w2sr.training.module import StudentModule


def _trainer(root: Path, steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(root),
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


def _datamodule(traces_file, tiny_model, **kwargs) -> TraceDataModule:
    return TraceDataModule(str(traces_file), tokenizer=tiny_model, batch_size=4, val_fraction=0.2, **kwargs)


# ------------------------------------------------------------------------------------------------------ masking
def test_prompt_is_masked_and_completion_plus_end_of_turn_is_trained(traces_file, tiny_model, tiny_tokenizer):
    dm = _datamodule(traces_file, tiny_model)
    dm.setup("fit")
    traces = {f"{t.problem.id}#{t.sample}": t for t in make_traces()}
    examples = dm.train_examples + dm.val_examples
    assert len(examples) == len(traces)
    for example in examples:
        trace = traces[example.key]
        ids, labels = example.input_ids, example.labels
        assert len(labels) == len(ids)
        assert all(label == IGNORE_INDEX or label == token for label, token in zip(labels, ids))
        prompt = tiny_tokenizer.apply_chat_template(trace.prompt, add_generation_prompt=True, tokenize=False)
        prompt_ids = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids  # the exact ids the model sees at generation time
        assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)  # the whole prompt is masked ...
        trained = ids[len(prompt_ids) :]
        assert labels[len(prompt_ids) :] == trained  # ... and everything after it is trained
        expected = tiny_tokenizer(trace.completion + "<|im_end|>", add_special_tokens=False)["input_ids"]
        assert trained[: len(expected)] == expected  # the completion, then the end-of-turn token
        assert tiny_tokenizer.convert_ids_to_tokens(trained[len(expected) - 1]) == "<|im_end|>"
    batch = PadCollator(tiny_tokenizer.pad_token_id)(examples[:4])
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == IGNORE_INDEX).all()


# -------------------------------------------------------------------------------------------- w2sr test: the loss
def _independent_nll(model_path: str, tokenizer, traces) -> tuple[float, int]:
    """Sum of per-token NLL of every completion (+ end of turn) given its prompt, and the number of those tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for trace in traces:
        prompt = tokenizer.apply_chat_template(trace.prompt, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(
            trace.prompt + [{"role": "assistant", "content": trace.completion}], tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + response_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
        for position in range(len(prompt_ids), ids.shape[1]):
            total -= float(logprobs[position - 1, ids[0, position]])
            count += 1
    return total, count


@pytest.mark.slow
def test_w2sr_test_loss_is_the_per_token_nll_of_the_completions(tmp_path, tiny_model, tiny_tokenizer):
    """``test/loss`` = sum of completion-token NLLs / number of completion tokens over the test set.

    The six traces fit one batch: today's logged epoch value is a batch-size-weighted mean of per-batch means,
    which equals the per-token mean only within one batch.
    """
    traces = make_traces(6, error_rate=0.5, seed=4)
    path = tmp_path / "test.jsonl"
    write_jsonl(path, (t.to_dict() for t in traces))
    main(
        [
            "test",
            "--model.model_name_or_path",
            tiny_model,
            "--data.test_file",
            str(path),
            "--data.batch_size",
            "8",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            str(tmp_path),
            "--trainer.logger.name",
            "log",
        ]
    )
    [row] = [r for r in csv.DictReader((tmp_path / "log" / "version_0" / "metrics.csv").open()) if r.get("test/loss")]
    total, count = _independent_nll(tiny_model, tiny_tokenizer, traces)
    assert count > 6 * 5
    assert float(row["test/loss"]) == pytest.approx(total / count, rel=1e-5)


# ------------------------------------------------------------------------------------------------------- export
def _lora_module(tiny_model: str, export: Path, **kwargs) -> StudentModule:
    return StudentModule(
        tiny_model,
        finetune="lora",
        lora=LoraOptions(r=4, alpha=8, dropout=0.0),
        export_dir=str(export),
        optimizer=lambda p: torch.optim.AdamW(p, lr=5e-2),
        **kwargs,
    )


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_export_holds_exactly_the_trained_weights(traces_file, tiny_model, tmp_path, finetune):
    from safetensors.torch import load_file

    export = tmp_path / "export"
    if finetune == "lora":
        module = _lora_module(tiny_model, export)
    else:
        module = StudentModule(
            tiny_model, finetune="full", export_dir=str(export), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2)
        )
    module.configure_model()
    initial = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    _trainer(tmp_path, 3).fit(module, _datamodule(traces_file, tiny_model))
    trained = {n.removeprefix("model."): p.detach() for n, p in module.named_parameters() if p.requires_grad}
    assert any(not torch.equal(p, initial["model." + n]) for n, p in trained.items())
    if finetune == "lora":
        saved = load_file(export / "adapter_model.safetensors")
        # peft drops the adapter name ("default") from the keys it saves
        assert set(saved) == {n.replace(".default", "") for n in trained}
        for name, value in trained.items():
            assert torch.equal(saved[name.replace(".default", "")], value), name
    else:
        saved = load_file(export / "model.safetensors")
        assert set(trained) - set(saved) <= {"lm_head.weight"}  # a tied head is saved once
        for name, value in saved.items():
            assert torch.equal(value, trained[name]), name
    card = json.loads((export / "w2sr_student.json").read_text())
    assert card["global_step"] == 3 and card["finetune"] == finetune
    assert card["dtype"] == "float32"  # issue 28.2: what `w2sr export` merges in
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in export.iterdir()}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)  # issue 28.6: the weights too, not safetensors' 0600


def test_an_export_interrupted_mid_write_leaves_the_old_export_and_no_staging_folder(traces_file, tiny_model, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "adapter_model.safetensors").write_bytes(b"old weights")
    (export / "adapter_config.json").write_text('{"old": true}')
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    module = _lora_module(tiny_model, export, overwrite_export=True)
    module.configure_model()

    def save_then_fail(directory, *args, **kwargs):
        (Path(directory) / "adapter_model.safetensors").write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    module.model.save_pretrained = save_then_fail
    with pytest.raises(OSError, match="No space left"):
        _trainer(tmp_path, 1).fit(module, _datamodule(traces_file, tiny_model))
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []


# ------------------------------------------------------------------------------------------ gradient checkpointing
@pytest.mark.parametrize("checkpointing", [True, False])
def test_gradient_checkpointing_recomputes_layers_in_backward(traces_file, tiny_model, tmp_path, checkpointing):
    """With checkpointing each decoder layer runs twice per step (forward, then again in backward); without, once."""
    module = StudentModule(tiny_model, finetune="lora", lora=LoraOptions(r=4), gradient_checkpointing=checkpointing)
    module.configure_model()
    base = module.model.get_base_model()
    assert base.is_gradient_checkpointing is checkpointing
    calls = []
    mlp = base.model.layers[0].mlp
    forward = mlp.forward  # counted by wrapping forward: module hooks do not fire in the recomputation

    def counted(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    mlp.forward = counted
    _trainer(tmp_path, 2).fit(module, _datamodule(traces_file, tiny_model))
    assert module.model.training
    assert len(calls) == (4 if checkpointing else 2)


# ----------------------------------------------------------------------------------------- optimizer, LoRA targets
def test_optimizer_receives_only_the_trainable_parameters(traces_file, tiny_model, tmp_path):
    module = _lora_module(tiny_model, tmp_path / "export")
    trainer = _trainer(tmp_path, 1)
    trainer.fit(module, _datamodule(traces_file, tiny_model))
    in_optimizer = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert 0 < len(trainable) < len(list(module.parameters()))
    assert len(in_optimizer) == len(trainable) and {id(p) for p in in_optimizer} == {id(p) for p in trainable}
    assert sum(p.numel() for p in in_optimizer) == sum(p.numel() for p in trainable)


def test_lora_wraps_every_linear_layer_but_the_lm_head_by_default(tiny_model):
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model)
    linear = {name for name, m in plain.named_modules() if isinstance(m, torch.nn.Linear)}
    assert "lm_head" in linear and len(linear) > 1
    module = StudentModule(tiny_model)  # all defaults
    module.configure_model()
    wrapped = {name for name, m in module.model.get_base_model().named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == linear - {"lm_head"}


# -------------------------------------------------------------------------------------------- trust_remote_code
def test_trust_remote_code_is_off_by_default(monkeypatch, tiny_model, capsys):
    import transformers

    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def record(klass, *args, _original=original, **kwargs):
            seen.append((klass.__name__, kwargs.get("trust_remote_code", "unset")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(record))
    module = StudentModule(tiny_model)
    module.configure_model()
    module.load_for_inference("cpu")
    TraceDataModule(tokenizer=tiny_model).load_tokenizer()
    assert {name for name, _ in seen} == {"AutoModelForCausalLM", "AutoTokenizer"}
    assert all(value is False for _, value in seen), seen
    with pytest.raises(SystemExit):  # and the CLI default agrees (data.trust_remote_code is linked to it)
        main(["fit", "--model.model_name_or_path", tiny_model, "--print_config"])
    import yaml

    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["trust_remote_code"] is False  # fit prints model: as class_path + init_args
