"""Verification: equivalence, time limits from threads, summaries, verify_file (corpus: test_promises_corpus.py).

Run: ``pytest tests/verification/test_verify.py`` (about half a minute on 2 cores).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from w2sr.records.jsonl import InputError, OutputExistsError
from w2sr.verification.grade import Verdict, VerifyOptions, verify_completion, verify_records
from w2sr.verification.stage import verify_file
from w2sr.verification.summary import print_summary, summarize

FAST = VerifyOptions(timeout=3.0)


def test_basic_verdicts() -> None:
    assert verify_completion("\\frac{1}{2}", "so \\boxed{0.5}") == Verdict("0.5", True, "correct")
    assert verify_completion("3", "so \\boxed{4}").status == "wrong"
    no_answer = verify_completion("3", "no idea")
    assert (no_answer.prediction, no_answer.correct, no_answer.status) == (None, False, "no_answer")
    bad = verify_completion(None, "\\boxed{3}", source="math")
    assert (bad.correct, bad.status, bad.prediction) == (None, "bad_gold", "3")
    assert verify_completion(None, "\\boxed{3}", source="math", record={"solution": "\\boxed{3}"}).correct is True
    assert verify_completion("B", "The answer is (B)", source="gpqa").correct is True
    assert (
        verify_completion(["$5$"], "\\boxed{5 km/h}", source="olympiadbench", record={"unit": "km/h"}).correct is True
    )


def test_truncated_flag_and_option() -> None:
    verdict = verify_completion("7", "reasoning \\boxed{7}", truncated=True)
    assert verdict.truncated and verdict.correct is True
    forced = verify_completion(
        "7", "reasoning \\boxed{7}", truncated=True, options=VerifyOptions(truncated_as_wrong=True)
    )
    assert (forced.correct, forced.status) == (False, "truncated")


def test_options_are_validated() -> None:
    for bad in ({"mode": "x"}, {"workers": 0}, {"timeout": 0}):
        with pytest.raises(ValueError):
            VerifyOptions(**bad)


def test_from_a_thread() -> None:
    results: list[Verdict] = []
    thread = threading.Thread(target=lambda: results.append(verify_completion("x=5", "\\boxed{5}", options=FAST)))
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and results[0].correct is True


def test_from_a_thread_pool_executor() -> None:
    cases = [(str(n), f"step...\\boxed{{{n if n % 3 else n + 1}}}") for n in range(24)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(pool.map(lambda c: verify_completion(c[0], c[1], options=FAST), cases))
    assert [v.correct for v in verdicts] == [n % 3 != 0 for n in range(24)]


ADVERSARIAL = {
    "tower": "\\boxed{10^{10^{10^{10}}}}",
    "nested": "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
    "megabyte": "x " * 500_000 + "\\boxed{5}",
    "megabyte_answer": "\\boxed{" + "1+" * 300_000 + "1}",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("where", ["main", "thread"])
def test_adversarial_inputs_are_bounded(name: str, where: str) -> None:
    options = VerifyOptions(timeout=2.0, retry_factor=1.0)  # no retry here: test_faults.py times the retry
    out: list[Verdict] = []

    def call() -> None:
        out.append(verify_completion("5", ADVERSARIAL[name], options=options))

    start = time.perf_counter()
    if where == "thread":
        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(15)
    else:
        call()
    elapsed = time.perf_counter() - start
    assert out, f"{name}: no verdict"
    assert elapsed < options.timeout + 3.0, f"{name}: {elapsed:.1f}s"  # limit + worker restart + slack
    assert out[0].correct is (name == "megabyte")
    assert verify_completion("2", "\\boxed{2}", options=options).correct is True  # the worker recovered


def test_pool_timeout_keeps_the_rest() -> None:
    records = [
        {"answer": "5", "completion": "\\boxed{5}"},
        {"answer": "5", "completion": ADVERSARIAL["tower"]},
        {"answer": "5", "completion": "\\boxed{5.0}"},
        {"answer": "6", "completion": ADVERSARIAL["tower"]},
        {"answer": "6", "completion": "\\boxed{6}"},
    ]
    start = time.perf_counter()
    out = verify_records(records, VerifyOptions(workers=2, timeout=1.5, retry_factor=1.0))
    assert time.perf_counter() - start < 10
    assert [r["correct"] for r in out] == [True, False, True, False, True]
    assert [r["verify_status"] for r in out] == ["correct", "timeout", "correct", "timeout", "correct"]


def test_verify_records_fields_and_summary() -> None:
    records = [
        {"qid": 1, "gold": "2", "text": "\\boxed{2}", "src": "a", "finish_reason": "stop", "completion_tokens": 10},
        {"qid": 2, "gold": "2", "text": "\\boxed{3}", "src": "a", "finish_reason": "stop", "completion_tokens": 20},
        {"qid": 3, "gold": "", "text": "\\boxed{3}", "src": "b", "finish_reason": "stop", "completion_tokens": 30},
        {"qid": 4, "gold": "9", "text": "long and cut", "src": "b", "finish_reason": "length", "completion_tokens": 40},
    ]
    options = VerifyOptions(completion_field="text", answer_field="gold", id_field="qid", source_field="src")
    out = verify_records(records, options)
    assert [r["correct"] for r in out] == [True, False, None, False]
    assert out[0]["qid"] == 1 and "correct" not in records[0]  # new dicts, input untouched
    summary = summarize(out, options)
    assert summary["records"] == 4 and summary["problems"] == 4 and summary["scored"] == 3
    assert summary["accuracy"] == pytest.approx(1 / 3, abs=1e-6)
    assert summary["no_answer"] == 1 and summary["truncated"] == 1 and summary["bad_gold"] == 1
    assert summary["by_source"]["a"]["accuracy"] == 0.5 and summary["by_source"]["b"]["bad_gold"] == 1
    assert summary["completion_tokens"]["max"] == 40
    assert summary["variants"] == {"W2SR": 4, "W2SR-P": 1, "W2SR-N": 2}
    with pytest.raises(InputError, match="field 'gold'"):
        verify_records([{"text": "x"}], options)
    from rich.console import Console

    console = Console(record=True, width=120)
    print_summary(summary, console)
    assert "W2SR-P" in console.export_text()


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {
        "id": "p1",
        "answer": "4",
        "source": "toy",
        "completion": "2+2=\\boxed{4}",
        "finish_reason": "stop",
        "completion_tokens": 5,
    },
    {
        "id": "p2",
        "answer": "5",
        "source": "toy",
        "completion": "2+3=\\boxed{6}",
        "finish_reason": "stop",
        "completion_tokens": 5,
    },
    {
        "id": "p3",
        "answer": None,
        "source": "toy",
        "completion": "\\boxed{1}",
        "finish_reason": "length",
        "completion_tokens": 9,
    },
]


def test_verify_file_outputs(tmp_path: Path) -> None:
    src = _write(tmp_path / "traces.jsonl", ROWS)
    out, summary_path, split = tmp_path / "v.jsonl", tmp_path / "s.json", tmp_path / "split"
    summary = verify_file(
        str(src), str(out), VerifyOptions(), split_dir=str(split), summary_path=str(summary_path), progress=False
    )
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["correct"] for r in lines] == [True, False, None]
    assert summary["accuracy"] == 0.5 and summary["bad_gold"] == 1 and summary["truncated"] == 1
    assert json.loads(summary_path.read_text())["variants"] == {"W2SR": 3, "W2SR-P": 1, "W2SR-N": 1}
    sizes = {p.name: len(p.read_text().splitlines()) for p in split.iterdir()}
    assert sizes == {"w2sr.jsonl": 3, "w2sr_p.jsonl": 1, "w2sr_n.jsonl": 1}
    with pytest.raises(OutputExistsError):
        verify_file(str(src), str(tmp_path / "new.jsonl"), VerifyOptions(), split_dir=str(split), progress=False)
    assert not (tmp_path / "new.jsonl").exists()  # checked every output before writing any
    verify_file(str(src), str(out), VerifyOptions(), overwrite=True, progress=False)
    with pytest.raises(InputError, match="overwrite the input"):
        verify_file(str(src), str(src), VerifyOptions(), overwrite=True, progress=False)


def test_verify_file_bad_input(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:2"):
        verify_file(str(bad_json), str(tmp_path / "o.jsonl"), VerifyOptions(), progress=False)
    missing = _write(tmp_path / "missing.jsonl", [ROWS[0], {"id": "x", "answer": "1"}])
    with pytest.raises(InputError, match=r"missing\.jsonl:2, field 'completion'"):
        verify_file(str(missing), str(tmp_path / "o.jsonl"), VerifyOptions(), progress=False)
    not_text = _write(tmp_path / "nt.jsonl", [{"answer": "1", "completion": 5}])
    with pytest.raises(InputError, match=r"nt\.jsonl:1, field 'completion'"):
        verify_file(str(not_text), str(tmp_path / "o.jsonl"), VerifyOptions(), progress=False)
    with pytest.raises(InputError, match="file not found"):
        verify_file(str(tmp_path / "nope.jsonl"), str(tmp_path / "o.jsonl"), VerifyOptions(), progress=False)
    assert not (tmp_path / "o.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_verify_file_custom_fields(tmp_path: Path) -> None:
    rows = [{"question_id": 7, "gt": ["$\\frac{1}{2}$"], "output": "\\boxed{0.5}", "dataset": "olympiadbench"}]
    src = _write(tmp_path / "elsewhere.jsonl", rows)
    options = VerifyOptions(
        completion_field="output", answer_field="gt", id_field="question_id", source_field="dataset", status_field=None
    )
    summary = verify_file(str(src), str(tmp_path / "o.jsonl"), options, progress=False)
    record = json.loads((tmp_path / "o.jsonl").read_text())
    assert record["correct"] is True and "verify_status" not in record
    assert summary["by_source"]["olympiadbench"]["accuracy"] == 1.0


def test_truncated_records_are_flagged() -> None:
    records = [
        {"id": "a", "answer": "7", "completion": "so \\boxed{7}", "finish_reason": "length"},
        {"id": "b", "answer": "7", "completion": "so \\boxed{7}", "finish_reason": "stop"},
    ]
    cut, done = verify_records(records, VerifyOptions())
    assert cut["truncated"] is True and cut["correct"] is True and "truncated" not in done


def test_verify_warns_when_most_answers_are_missing_or_a_split_is_empty(tmp_path: Path, capsys) -> None:
    """Issue 28.7: 16/16 ``no_answer`` and an empty w2sr_p.jsonl went by without a word. Now ``verify`` says what to
    check (grader preset, max_new_tokens, the prompt's boxed instruction) and which split is empty, on stderr and
    in the summary's ``warnings``; a healthy run gets none."""
    cut = [
        {"completion": f"Let me think about {i} step by", "answer": "7", "finish_reason": "length"} for i in range(3)
    ]
    boxed = {"completion": "So \\boxed{8}.", "answer": "7", "finish_reason": "stop"}
    src = _write(tmp_path / "traces.jsonl", [*cut, boxed])
    split, summary_path = tmp_path / "split", tmp_path / "s.json"
    capsys.readouterr()
    verify_file(
        str(src),
        str(tmp_path / "v.jsonl"),
        VerifyOptions(),
        split_dir=str(split),
        summary_path=str(summary_path),
        progress=False,
    )
    err = " ".join(capsys.readouterr().err.split())
    assert "w2sr verify: warning: no answer could be extracted from 3 of 4 completions (75%)" in err
    assert "--options.grader default" in err and "3 of 4 were cut at the token limit" in err
    assert "max_new_tokens" in err and "\\boxed{}" in err
    assert f"the split {split / 'w2sr_p.jsonl'} is empty" in err and "--data.variant correct" in err
    assert "w2sr_n.jsonl is empty" not in err
    assert len(json.loads(summary_path.read_text())["warnings"]) == 2

    healthy = _write(tmp_path / "ok.jsonl", [{"completion": "\\boxed{7}", "answer": "7"}, boxed])
    summary = verify_file(str(healthy), str(tmp_path / "ok-v.jsonl"), VerifyOptions(), split_dir=str(tmp_path / "s2"))
    assert summary["warnings"] == [] and "warning" not in capsys.readouterr().err
