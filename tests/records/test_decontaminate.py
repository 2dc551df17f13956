"""Decontamination on the real files of ../shared/data: MATH test levels 3-5 hold 367 MATH-500 problems verbatim,
and ``decontaminate`` drops exactly those as exact matches (plus the ones sharing an 8-word run); normalisation,
the n-gram rule, traces files and the output rules on small real-text cases.
Run: ``pytest tests/records/test_decontaminate.py``.
"""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, shared_file

from w2sr.records.decontaminate import DecontaminateRequest, decontaminate, normalize_problem, word_ngrams
from w2sr.records.jsonl import InputError, OutputExistsError, read_jsonl, write_jsonl

LEVELS = ("Level 3", "Level 4", "Level 5")


def _math500() -> dict[str, dict]:
    return {row["unique_id"]: row for row in read_jsonl(shared_file("math500/test.jsonl"))}


def test_math_test_levels_3_to_5_lose_the_367_math500_problems_they_hold(tmp_path) -> None:
    rows = [row for row in read_jsonl(shared_file("math/test.jsonl")) if row["level"] in LEVELS]
    write_jsonl(tmp_path / "pool.jsonl", rows)
    report = decontaminate(
        DecontaminateRequest(
            input=str(tmp_path / "pool.jsonl"),
            output=str(tmp_path / "kept.jsonl"),
            benchmarks=["math500"],
            benchmark_dir=str(SHARED_DATA),
        )
    )
    bench = _math500()
    verbatim = {
        row["unique_id"]
        for row in rows
        if row["unique_id"] in bench and row["problem"] == bench[row["unique_id"]]["problem"]
    }
    assert len(rows) == 3669 and len(verbatim) == 367
    exact = [e for e in report["dropped_records"] if e["match"] == "exact"]
    assert sorted(e["id"] for e in exact) == sorted(verbatim)  # exactly the verbatim ones, each named with its twin
    assert all(e["benchmark"] == "math500" and e["benchmark_id"] == e["id"] for e in exact)
    assert all(bench[e["benchmark_id"]]["problem"] == e["problem"] == e["benchmark_problem"] for e in exact)
    ngram = [e for e in report["dropped_records"] if e["match"] == "ngram"]
    for entry in ngram:  # the shared 8 words are in both normalised texts
        assert entry["ngram"] in normalize_problem(entry["problem"]) and len(entry["ngram"].split()) == 8
        assert entry["ngram"] in normalize_problem(bench[entry["benchmark_id"]]["problem"])
    kept = read_jsonl(tmp_path / "kept.jsonl")
    dropped_ids = {e["id"] for e in report["dropped_records"]}
    assert kept == [row for row in rows if row["unique_id"] not in dropped_ids]  # unchanged, in input order
    assert report["kept"] + report["dropped"] == report["records"] == 3669
    assert report["dropped_by_match"] == {"exact": 367, "ngram": len(ngram), "similar": 0}
    assert json.loads((tmp_path / "kept.jsonl.report.json").read_text()) == report


def _pool(tmp_path, problems: list[str], samples: int = 1) -> str:
    path = tmp_path / f"traces{samples}.jsonl"
    rows = ({"id": f"p{i}", "problem": p, "sample": s} for i, p in enumerate(problems) for s in range(samples))
    write_jsonl(path, rows, overwrite=True)
    return str(path)


def test_normalisation_and_the_ngram_rule_on_a_real_problem(tmp_path) -> None:
    real = _math500()["test/precalculus/807.json"]["problem"]  # "Convert the point $(0,3)$ in rectangular ..."
    words = normalize_problem(real).split()
    assert len(words) >= 12
    variants = [
        real.upper().replace(" ", "   \n "),  # case and whitespace
        real.replace("$(0,3)$", "$(0,\\,3)$").replace(" ", "~", 1),  # LaTeX spacing
        "Someone asks: " + " ".join(words[2:10]) + " and nothing else.",  # 8 words in a row
        "Someone asks: " + " ".join(words[2:9]) + " and nothing else.",  # 7 words: kept
        "What is $1+1$?",
    ]
    report = decontaminate(
        DecontaminateRequest(
            input=_pool(tmp_path, variants, samples=2),
            output=str(tmp_path / "kept.jsonl"),
            benchmarks=["math500"],
            benchmark_dir=str(SHARED_DATA),
        )
    )
    found = {(e["id"], e["sample"]): (e["match"], e["benchmark_id"]) for e in report["dropped_records"]}
    match = "test/precalculus/807.json"
    assert found == {
        **{(f"p{i}", s): ("exact", match) for i in (0, 1) for s in (0, 1)},
        **{("p2", s): ("ngram", match) for s in (0, 1)},
    }
    assert [(r["id"], r["sample"]) for r in read_jsonl(tmp_path / "kept.jsonl")] == [
        ("p3", 0),
        ("p3", 1),
        ("p4", 0),
        ("p4", 1),
    ]
    assert report["problems"] == 5 and report["problems_dropped"] == 3 and report["dropped"] == 6
    exact_only = decontaminate(
        DecontaminateRequest(
            input=_pool(tmp_path, variants),
            output=str(tmp_path / "exact.jsonl"),
            benchmarks=["math500"],
            benchmark_dir=str(SHARED_DATA),
            ngram=0,
        )
    )
    assert [e["id"] for e in exact_only["dropped_records"]] == ["p0", "p1"]
    assert word_ngrams("a b c", 2) == ["a b", "b c"] and word_ngrams("a b", 3) == [] and word_ngrams("a", 0) == []


def test_outputs_and_bad_input_are_refused_before_any_work(tmp_path) -> None:
    pool = _pool(tmp_path, ["What is $1+1$?"])
    base = {"benchmarks": ["math500"], "benchmark_dir": str(SHARED_DATA)}
    shared_file("math500/test.jsonl")
    with pytest.raises(InputError, match="would overwrite the input"):
        decontaminate(DecontaminateRequest(input=pool, output=pool, **base))
    (tmp_path / "kept.jsonl").write_text("keep me\n")
    with pytest.raises(OutputExistsError):
        decontaminate(DecontaminateRequest(input=pool, output=str(tmp_path / "kept.jsonl"), **base))
    assert (tmp_path / "kept.jsonl").read_text() == "keep me\n"
    with pytest.raises(InputError, match="known benchmarks"):
        DecontaminateRequest(input=pool, output=str(tmp_path / "o.jsonl"), benchmarks=["mmlu"])
    with pytest.raises(InputError, match="ngram"):
        DecontaminateRequest(input=pool, output=str(tmp_path / "o.jsonl"), benchmarks=["math500"], ngram=-1)
    write_jsonl(tmp_path / "bad.jsonl", [{"problem": "fine"}, {"question": "no problem field"}])
    with pytest.raises(InputError) as err:
        decontaminate(DecontaminateRequest(input=str(tmp_path / "bad.jsonl"), output=str(tmp_path / "o.jsonl"), **base))
    assert err.value.line == 2 and err.value.field == "problem"
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.report.json").exists()


def test_similarity_catches_a_reworded_variant_the_ngram_check_misses(tmp_path) -> None:
    """A real near-variant: MATH train algebra/1477 is MATH-500 algebra/170 with other numbers, the same gold
    (character similarity 0.93; no 8 words in a row in common)."""
    train = {row["unique_id"]: row for row in read_jsonl(shared_file("math/train.jsonl"))}
    problems = [train["train/algebra/1477.json"]["problem"], train["train/algebra/0.json"]["problem"]]
    base = {"benchmarks": ["math500"], "benchmark_dir": str(SHARED_DATA)}
    plain = decontaminate(
        DecontaminateRequest(input=_pool(tmp_path, problems), output=str(tmp_path / "a.jsonl"), **base)
    )
    assert plain["dropped"] == 0
    similar = decontaminate(
        DecontaminateRequest(input=_pool(tmp_path, problems), output=str(tmp_path / "b.jsonl"), similarity=0.8, **base)
    )
    (entry,) = similar["dropped_records"]
    assert (entry["id"], entry["match"], entry["benchmark_id"]) == ("p0", "similar", "test/algebra/170.json")
    assert 0.9 < entry["similarity"] < 1
    with pytest.raises(InputError, match="similarity"):
        DecontaminateRequest(input="x", output="y", benchmarks=["math500"], similarity=1.5)


def test_the_command(tmp_path, capsys) -> None:
    """``w2sr decontaminate`` end to end: the kept file, the report, exit 2 on bad input, nothing overwritten."""
    from conftest import run_cli

    rows = [row for row in read_jsonl(shared_file("math/test.jsonl")) if row["level"] in LEVELS][:60]
    write_jsonl(tmp_path / "pool.jsonl", rows)
    args = ["decontaminate", "--input", str(tmp_path / "pool.jsonl"), "--output", str(tmp_path / "kept.jsonl")]
    code, text = run_cli([*args, "--benchmarks", "[math500]", "--benchmark_dir", str(SHARED_DATA)], capsys)
    assert code == 0, text
    report = json.loads((tmp_path / "kept.jsonl.report.json").read_text())
    bench = _math500()
    verbatim = [r["unique_id"] for r in rows if bench.get(r["unique_id"], {}).get("problem") == r["problem"]]
    assert verbatim and [e["id"] for e in report["dropped_records"] if e["match"] == "exact"] == verbatim
    assert len(read_jsonl(tmp_path / "kept.jsonl")) == report["kept"] == 60 - report["dropped"]
    assert f"kept {report['kept']} of 60 records" in " ".join(text.split())
    before = (tmp_path / "kept.jsonl").read_bytes()
    code, text = run_cli([*args, "--benchmarks", "[math500]", "--benchmark_dir", str(SHARED_DATA)], capsys)
    assert code == 2 and "--overwrite" in text and (tmp_path / "kept.jsonl").read_bytes() == before
    code, text = run_cli([*args, "--benchmarks", "[mmlu]", "--overwrite", "true"], capsys)
    assert code == 2 and "math500" in text
