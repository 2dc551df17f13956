"""Trace schema round trip, validation errors, and the W2SR / W2SR-P / W2SR-N variants."""

from __future__ import annotations

import json

import pytest
from conftest import make_traces

from w2sr.records.jsonl import InputError, write_jsonl
from w2sr.records.traces import read_traces, select_variant, variant_sizes


def test_roundtrip_and_variants(tmp_path):
    traces = make_traces(30)
    path = tmp_path / "v.jsonl"
    write_jsonl(path, (t.to_dict() for t in traces))
    loaded = read_traces(path, verified=True)
    assert [t.to_dict() for t in loaded] == [t.to_dict() for t in traces]
    sizes = variant_sizes(loaded)
    assert sizes["W2SR"] == 30 and sizes["W2SR-P"] + sizes["W2SR-N"] == 30
    assert 0 < sizes["W2SR-P"] < 30
    assert all(t.correct for t in select_variant(loaded, "correct"))
    assert not any(t.correct for t in select_variant(loaded, "incorrect"))


def test_schema_fields(tmp_path):
    record = make_traces(1)[0].to_dict()
    for name in (
        "id",
        "problem",
        "answer",
        "source",
        "sample",
        "teacher",
        "prompt",
        "completion",
        "finish_reason",
        "completion_tokens",
        "prediction",
        "correct",
    ):
        assert name in record
    assert record["prompt"][0] == {"role": "system", "content": "You are a helpful assistant."}


def test_bad_trace_fields(tmp_path):
    record = make_traces(1)[0].to_dict()
    path = tmp_path / "t.jsonl"
    bad = dict(record, finish_reason="eos")
    path.write_text(json.dumps(record) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InputError) as err:
        read_traces(path)
    assert err.value.line == 2 and err.value.field == "finish_reason"
    del bad["completion"]
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(InputError) as err:
        read_traces(path)
    assert err.value.field == "completion"
    unverified = {k: v for k, v in record.items() if k not in ("prediction", "correct")}
    path.write_text(json.dumps(unverified) + "\n")
    assert len(read_traces(path)) == 1
    with pytest.raises(InputError, match="'prediction'"):
        read_traces(path, verified=True)
