"""Report: before/after comparison of evaluation results, with clear errors on bad files."""

from __future__ import annotations

import json

import pytest

from w2sr.report import compare, main


def _results(path, model, accuracy):
    path.write_text(json.dumps({"model": model, "overall": {"accuracy": accuracy, "problems": 10, "samples": 10}}))
    return path


def test_compare_and_cli(tmp_path, capsys):
    before = _results(tmp_path / "a.json", "base", 0.1)
    after = _results(tmp_path / "b.json", "student", 0.45)
    rows = compare([before, after])
    assert rows[0]["delta"] == 0 and abs(rows[1]["delta"] - 0.35) < 1e-9
    teacher = tmp_path / "summary.json"
    teacher.write_text(json.dumps({"accuracy": 0.3, "records": 20}))
    main([str(before), str(after), "--teacher", str(teacher), "--json", str(tmp_path / "cmp.json")])
    out = capsys.readouterr().out
    assert "student" in out and "+35.0%" in out and "teacher traces" in out and "+20.0%" in out
    assert [row["run"] for row in json.loads((tmp_path / "cmp.json").read_text())] == [
        tmp_path.name, "teacher traces", tmp_path.name]


def test_bad_results_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"model": "x"}))
    with pytest.raises(SystemExit) as err:
        main([str(bad)])
    assert err.value.code == 2 and "overall" in capsys.readouterr().err
