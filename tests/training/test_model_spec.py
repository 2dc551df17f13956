"""The loaders read a frozen ``ModelSpec`` (w2sr/training/loading.py), not the module's whole hyper-parameters; the
docstring examples of the training modules (the padding collator's exact tensors, the spec) run here.

Run: ``pytest tests/training/test_model_spec.py``.
"""

from __future__ import annotations

import dataclasses
import doctest

import pytest

from w2sr.training import batching, loading
from w2sr.training.loading import LoraOptions, ModelSpec
from w2sr.training.module import StudentModule


@pytest.mark.parametrize("module", [batching, loading])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_the_module_hands_its_loaders_a_frozen_spec():
    module = StudentModule("some/model", lora=LoraOptions(r=4), dtype="float32", export_dir="out")
    spec = module.spec
    assert (spec.model_name_or_path, spec.lora.r, spec.dtype, spec.quantization) == ("some/model", 4, "float32", "none")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.adapter_path = "elsewhere"  # type: ignore[misc]
    assert module.hparams.adapter_path is None


def test_a_checkpoint_s_dict_lora_becomes_the_dataclass():
    spec = ModelSpec.from_hparams({"model_name_or_path": "m", "finetune": "lora", "lora": {"r": 8, "alpha": 16}})
    assert spec.lora == LoraOptions(r=8, alpha=16)
