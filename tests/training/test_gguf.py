"""w2sr.training.gguf (``w2sr convert-gguf``): which file a location names, and the refusals made before any weight
is read. The conversion of a real GGUF (SmolLM2-135M-Instruct) runs in ``tests/cli/test_real_model.py``."""

from __future__ import annotations

import pytest

from w2sr.records.jsonl import InputError, OutputExistsError
from w2sr.training import gguf as gguf_module
from w2sr.training.gguf import convert_gguf, find_gguf


def test_find_gguf_takes_a_file_or_the_one_gguf_in_a_folder(tmp_path):
    model = tmp_path / "pkg" / "Model.Q4_1.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF")
    assert find_gguf(model) == model and find_gguf(model.parent) == model
    (model.parent / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(InputError, match=r"exactly one \.gguf file in this folder \(found: Model.Q4_1.gguf, other"):
        find_gguf(model.parent)
    with pytest.raises(InputError, match="file not found"):
        find_gguf(tmp_path / "missing.gguf")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(InputError, match=r"not a \.gguf file"):
        find_gguf(tmp_path / "model.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"found: none"):
        find_gguf(tmp_path / "empty")


def test_an_existing_output_is_refused_before_reading_the_model(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"not a real gguf: reading it would fail")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="--overwrite true"):
        convert_gguf(model, out)
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(InputError, match="unknown dtype"):
        convert_gguf(model, tmp_path / "new", dtype="int8")
    monkeypatch.setattr(gguf_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r'pip install "w2sr\[gguf\]"'):
        convert_gguf(model, tmp_path / "new")
