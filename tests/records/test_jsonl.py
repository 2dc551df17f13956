"""JSONL reading and writing: errors name file, line and field; writes are atomic; nothing is overwritten."""

from __future__ import annotations

import pytest

from w2sr.records.jsonl import InputError, OutputExistsError, read_jsonl, write_json, write_jsonl


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(InputError) as err:
        read_jsonl(path)
    assert f"{path}:3" in str(err.value) and "malformed JSON" in str(err.value)


def test_missing_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1, "b": 2}\n{"a": 1}\n')
    with pytest.raises(InputError) as err:
        read_jsonl(path, required=("a", "b"))
    assert err.value.line == 2 and err.value.field == "b"
    assert f"{path}:2" in str(err.value) and "'b'" in str(err.value)


def test_non_object_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(InputError, match="expected a JSON object"):
        read_jsonl(path)


def test_write_refuses_existing_and_keeps_it(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_jsonl(path, [{"a": 2}])
    assert read_jsonl(path) == [{"a": 1}]
    write_jsonl(path, [{"a": 3}], overwrite=True)
    assert read_jsonl(path) == [{"a": 3}]


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.jsonl"

    def records():
        yield {"a": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(path, records())
    assert list(tmp_path.iterdir()) == []


def test_write_json_roundtrip(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_json(path, {"x": [1, 2]})
    assert '"x"' in path.read_text()


def test_outputs_get_normal_permissions(tmp_path):
    import os

    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
