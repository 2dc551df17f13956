"""Exports that stop anywhere (issue 26, item 3): every export of a student trained from a base whose only EOS is
``<|endoftext|>`` lists the end-of-turn token ``<|im_end|>`` among ``eos_token_id`` in ``generation_config.json``, so
plain transformers ``generate`` (no w2sr stop list) ends the turn. The base (``conftest.turn_ending_base``) answers
``7<|im_end|>`` and then repeats ``<|im_end|>``; before the fix the exports kept the base's config and wrote
``<|im_end|>`` up to the token limit. The real vLLM engine: ``tests/generation/test_vllm_export_stops.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import turn_ending_base

from w2sr.cli import main
from w2sr.toy import EOS_TOKEN, IM_END
from w2sr.training.datamodule import TraceDataModule
from w2sr.training.loading import LoraOptions
from w2sr.training.module import StudentModule

QUIET = ["--trainer.logger", "false"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    return turn_ending_base(str(tmp_path_factory.mktemp("eot") / "base"))


def eos_ids(folder: Path) -> list[int]:
    value = json.loads((Path(folder) / "generation_config.json").read_text())["eos_token_id"]
    return [value] if isinstance(value, int) else value


def plain_generate(folder: Path, base_dir: str, max_new_tokens: int = 8) -> list[str]:
    """Plain transformers: the folder's own generation config, no eos/stop argument."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from w2sr.records.prompts import build_messages, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = tokenizer(render_prompt(tokenizer, build_messages("What is 3 + 4?")), return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.convert_ids_to_tokens(out[0, ids.shape[1] :])


def _fit(module: StudentModule, base_dir: str, root: Path, traces_file: Path) -> None:
    data = TraceDataModule(str(traces_file), tokenizer=base_dir, batch_size=4, val_fraction=0.0, cache_dir=None)
    L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    ).fit(module, data)


def test_the_base_alone_writes_past_the_turn(base):
    """The control: with the base's own config (EOS <|endoftext|> only) plain generate does not stop at <|im_end|>."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    assert eos_ids(Path(base)) == [tokenizer.convert_tokens_to_ids(EOS_TOKEN)]
    assert plain_generate(Path(base), base) == ["7"] + [IM_END] * 7


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_fit_exports_and_merges_end_the_turn(base, traces_file, tmp_path, finetune):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    im_end, eot = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    export = tmp_path / "export"
    extra = {"lora": LoraOptions(r=4, alpha=8, dropout=0.0)} if finetune == "lora" else {}
    module = StudentModule(
        base,
        finetune=finetune,
        dtype="float32",
        export_dir=str(export),
        optimizer=lambda p: torch.optim.SGD(p, lr=1e-4),
        **extra,
    )
    _fit(module, base, tmp_path, traces_file)
    assert eos_ids(export) == [eot, im_end]  # the base's EOS first, then the end of turn
    if finetune == "full":
        assert plain_generate(export, base) == ["7", IM_END]
        return
    assert (export / "adapter_config.json").is_file()  # the adapter folder carries it too, beside its tokenizer
    merged = tmp_path / "merged"
    main(["export", "--adapter", str(export), "--output", str(merged), "--dtype", "float32", *QUIET])
    assert eos_ids(merged) == [eot, im_end]
    assert plain_generate(merged, base) == ["7", IM_END]


def test_turn_end_tokens_follow_the_chat_template(tiny_tokenizer):
    """ChatML closes a turn with <|im_end|>; without a chat template w2sr trains the EOS token instead."""
    import copy

    from w2sr.training.export_stops import stopping_generation_config, turn_end_tokens

    assert turn_end_tokens(tiny_tokenizer) == [IM_END]
    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    assert turn_end_tokens(plain) == [EOS_TOKEN]
    config = stopping_generation_config(None, None, plain)  # nothing known: the tokenizer's EOS
    assert config.eos_token_id == plain.convert_tokens_to_ids(EOS_TOKEN)
