"""Problem readers: local formats, field mapping, stable ids, clear errors, and the real benchmark files."""

from __future__ import annotations

import json

import pytest
from conftest import shared_file

from w2sr.records.jsonl import InputError
from w2sr.records.problems import FieldMap, Problem, load_problems


def test_jsonl_with_extras_and_source(tmp_path):
    path = tmp_path / "toy.jsonl"
    path.write_text(json.dumps({"id": 1, "problem": "1+1?", "answer": "2", "level": 3}) + "\n")
    [problem] = load_problems(str(path))
    assert problem == Problem(id="1", problem="1+1?", answer="2", source="toy", extras={"level": 3})
    assert problem.to_dict() == {"id": "1", "problem": "1+1?", "answer": "2", "source": "toy", "level": 3}


def test_json_csv_parquet(tmp_path):
    rows = [{"q": "What is 2+3?", "a": "5"}, {"q": "What is 3+3?", "a": "6"}]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "p.csv"))
    fields = FieldMap(problem="q", answer="a", id=None)
    for suffix in ("json", "parquet", "csv"):
        problems = load_problems(str(tmp_path / f"p.{suffix}"), fields=fields)
        assert [p.problem for p in problems] == ["What is 2+3?", "What is 3+3?"]
        assert [str(p.answer) for p in problems] == ["5", "6"]
        assert len({p.id for p in problems}) == 2  # stable generated ids


def test_missing_field_and_duplicates(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "problem": "x", "answer": "1"}\n{"id": "b", "problem": "y"}\n')
    with pytest.raises(InputError) as err:
        load_problems(str(path))
    assert err.value.line == 2 and err.value.field == "answer"
    path.write_text('{"id": "a", "problem": "x", "answer": "1"}\n{"id": "a", "problem": "y", "answer": "2"}\n')
    with pytest.raises(InputError, match="duplicate id 'a'"):
        load_problems(str(path))


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_problems(str(tmp_path / "nope.jsonl"))
    (tmp_path / "p.txt").write_text("hi")
    with pytest.raises(InputError, match="unsupported file type"):
        load_problems(str(tmp_path / "p.txt"))


def test_real_benchmarks_with_field_mapping():
    math500 = load_problems(str(shared_file("math500/test.jsonl")), fields=FieldMap(id="unique_id"))
    assert len(math500) == 500 and math500[0].source == "math500" and "level" in math500[0].extras
    gsm8k = load_problems(str(shared_file("gsm8k/test.jsonl")), fields=FieldMap(problem="question", id=None), limit=50)
    assert len(gsm8k) == 50 and "####" in gsm8k[0].answer


def test_hub_ids_go_through_datasets(monkeypatch):
    """A name that is not a local file is a `datasets` hub id: split, subset and field mapping are passed on."""
    import datasets

    calls = []

    def fake_load_dataset(name, subset=None, split=None):
        calls.append((name, subset, split))
        return datasets.Dataset.from_list([{"question": "1+1?", "answer": "#### 2"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    [problem] = load_problems("openai/gsm8k", split="test", subset="main", fields=FieldMap(problem="question", id=None))
    assert calls == [("openai/gsm8k", "main", "test")]
    assert problem.source == "openai/gsm8k" and problem.answer == "#### 2" and problem.id.startswith("openai/gsm8k-0-")


def test_a_missing_field_lists_the_fields_the_record_has(tmp_path):
    """Issue 28.8: GSM8K's file has ``question``, not ``problem``; the error names the fields it has and the option
    that maps one (before: only "missing required field")."""
    with pytest.raises(InputError) as err:
        load_problems(str(shared_file("gsm8k/test.jsonl")))
    message = str(err.value)
    assert ":1, field 'problem': missing required field" in message
    assert "the record has: answer, question" in message and "--fields.problem FIELD" in message
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"Problem": "1+1?", "answer": "2", "idx": 3}) + "\n")
    with pytest.raises(InputError, match=r"did you mean 'Problem'\? the record has: Problem, answer, idx"):
        load_problems(str(path))
    with pytest.raises(InputError, match=r"field 'uid'.*--fields.id FIELD \(or --fields.id null"):
        load_problems(str(path), fields=FieldMap(problem="Problem", id="uid"))
