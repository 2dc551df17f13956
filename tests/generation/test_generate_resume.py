"""Streaming, crash-safe generate output and ``--resume true``: torn tails, skipped pairs, settings fingerprint, and a
real SIGKILL of a ``w2sr generate`` process followed by a resumed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from w2sr.generation.base import SamplingOptions
from w2sr.generation.card import GenerationStats, build_card, generation_settings, write_card
from w2sr.generation.run import stream_traces
from w2sr.generation.stage import GenerateJob, prepare_output
from w2sr.generation.store import TraceWriter, finalize, repair_torn_tail, scan
from w2sr.generation.toy import ToyTeacherBackend
from w2sr.records.jsonl import InputError, OutputExistsError, read_jsonl
from w2sr.records.prompts import PromptOptions
from w2sr.toy import make_problems, write_toy_data

REPO = Path(__file__).resolve().parents[2]


def _settings(**overrides):
    kwargs = dict(
        model="m", adapter=None, backend="hf", prompt=PromptOptions(), sampling=SamplingOptions(temperature=1.0)
    )
    kwargs.update(overrides)
    return generation_settings(**kwargs)


def test_torn_tail_is_dropped_and_done_pairs_are_read(tmp_path):
    path = tmp_path / "out.jsonl"
    with TraceWriter(path) as writer:
        writer.append([{"id": "a", "sample": 0}, {"id": "a", "sample": 1}])
        writer.append([{"id": "b", "sample": 0}])
    with path.open("a") as handle:
        handle.write('{"id": "c", "sam')  # a write cut by a kill
    assert scan(path).done == {("a", 0), ("a", 1), ("b", 0)} and scan(path).torn_bytes == 16
    assert repair_torn_tail(path) == 16
    assert path.read_text().endswith('"sample": 0}\n') and repair_torn_tail(path) == 0
    assert len(read_jsonl(path)) == 3


def test_a_bad_middle_line_is_an_input_error(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a", "sample": 0}\nnot json\n{"id": "b", "sample": 0}\n')
    with pytest.raises(InputError, match=r"out.jsonl:2"):
        scan(path)


def test_finalize_orders_by_problem_and_deduplicates(tmp_path):
    out, part = tmp_path / "out.jsonl", tmp_path / "part.jsonl"
    out.write_text('{"id": "b", "sample": 1}\n{"id": "b", "sample": 0}\n')
    part.write_text('{"id": "a", "sample": 0}\n{"id": "b", "sample": 0}\n{"id": "zz", "sample": 0}\n')
    assert finalize(out, [out, part], ["a", "b"]) == 4
    assert [(r["id"], r["sample"]) for r in read_jsonl(out)] == [("a", 0), ("b", 0), ("b", 1), ("zz", 0)]


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "sample": 0}\n')
    job = GenerateJob(
        output=str(out), problems=[], prompt=PromptOptions(), sampling=SamplingOptions(), settings=_settings()
    )
    with pytest.raises(OutputExistsError, match="--resume true"):
        prepare_output(job)
    job.resume = True
    with pytest.raises(InputError, match="no generation card"):
        prepare_output(job)
    write_card(out, build_card(_settings(), SamplingOptions(), GenerationStats(), complete=False))
    prepare_output(job)  # same settings: fine
    for changed in (
        _settings(model="other"),
        _settings(adapter="a"),
        _settings(prompt=PromptOptions(system="S")),
        _settings(sampling=SamplingOptions(temperature=0.6)),
        _settings(backend="vllm"),
    ):
        job.settings = changed
        with pytest.raises(InputError, match="other settings"):
            prepare_output(job)
    job.settings = _settings(sampling=SamplingOptions(n=4, temperature=1.0, batch_size=3))  # more samples, other batch
    prepare_output(job)
    job.overwrite = True
    with pytest.raises(InputError, match="choose one"):
        prepare_output(job)
    job.resume = False
    prepare_output(job)
    assert not out.exists()


def test_stream_skips_done_pairs(tiny_tokenizer):
    problems = make_problems(4, 0, "test")
    backend = ToyTeacherBackend(tiny_tokenizer)
    sampling = SamplingOptions(n=2, temperature=1.0)
    full = [t for ts in stream_traces(backend, problems, tiny_tokenizer, PromptOptions(), sampling) for t in ts]
    done = {(problems[0].id, 0), (problems[0].id, 1), (problems[2].id, 1)}
    stats = GenerationStats()
    rest = [
        t
        for ts in stream_traces(backend, problems, tiny_tokenizer, PromptOptions(), sampling, done=done, stats=stats)
        for t in ts
    ]
    assert {(t.problem.id, t.sample) for t in rest} == {(t.problem.id, t.sample) for t in full} - done
    assert stats.resumed_samples == 3 and stats.samples == 5
    by_key = {(t.problem.id, t.sample): t.completion for t in full}
    assert all(by_key[(t.problem.id, t.sample)] == t.completion for t in rest)


def _generate(model: str, problems: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "w2sr.cli",
        "generate",
        "--model.model_name_or_path",
        model,
        "--problems",
        str(problems),
        "--output",
        str(output),
        "--sampling.max_new_tokens",
        "24",
        "--sampling.batch_size",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accelerator",
        "cpu",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_output(tmp_path, tiny_model, capsys):
    write_toy_data(str(tmp_path / "toy"), n_train=24, n_test=4)
    problems = tmp_path / "toy" / "train.jsonl"
    out, ref = tmp_path / "out.jsonl", tmp_path / "ref.jsonl"
    proc = subprocess.Popen(
        _generate(tiny_model, problems, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    kept = out.read_text().count("\n")
    assert 3 <= kept < 24  # killed mid-run
    with out.open("a") as handle:
        handle.write('{"id": "toy-arith-train-s0-000')  # what a kill in the middle of a write leaves
    from w2sr.cli import main  # the refusals exit 2 before any model is loaded: checked in this process

    for extra, message in (
        ((), "--resume true"),
        (("--resume", "true", "--sampling.temperature", "0.5"), "other settings"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(_generate(tiny_model, problems, out, *extra)[3:])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    run = subprocess.run(
        _generate(tiny_model, problems, out, "--resume", "true"), env=_env(), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "torn last line" in run.stderr
    card = json.loads(Path(f"{out}.card.json").read_text())
    assert card["complete"] and card["resumed_samples"] == kept and card["samples_generated"] == 24 - kept
    run = subprocess.run(_generate(tiny_model, problems, ref), env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    resumed, reference = read_jsonl(out), read_jsonl(ref)
    keys = [(r["id"], r["sample"]) for r in resumed]
    assert len(keys) == len(set(keys)) == 24
    assert resumed == reference  # same pairs, same order, same greedy completions


def test_fast_scan_agrees_with_json(tmp_path):
    """The regex scan of files this stage wrote and the per-line JSON parse find the same pairs (incl. ids and
    problem texts that contain quotes, 'sample' keys in text and nested extras)."""
    from w2sr.generation.store import _fast_keys, _key
    from w2sr.records.jsonl import dumps
    from w2sr.records.problems import Problem
    from w2sr.records.traces import Trace

    traces = [
        Trace(
            problem=Problem(
                id=pid, problem='say ", "sample": 9, "teacher": "x', answer="1", extras={"meta": {"sample": 7}}
            ),
            sample=s,
            teacher="t",
            prompt=[{"role": "user", "content": '"sample": 5'}],
            completion='{"id": "fake", "sample": 3, "teacher": ',
            finish_reason="stop",
            completion_tokens=1,
        )
        for pid in ("p1", "p2", "p3")
        for s in (0, 2)
    ]
    path = tmp_path / "out.jsonl"
    path.write_text("".join(dumps(t.to_dict()) + "\n" for t in traces))
    data = path.read_bytes()
    expected = [_key(line, path, 0) for line in data.split(b"\n")[:-1]]
    assert _fast_keys(data, len(data)) == expected == [(p, s) for p in ("p1", "p2", "p3") for s in (0, 2)]
    odd = tmp_path / "odd.jsonl"
    odd.write_text(dumps({**traces[0].to_dict(), "id": 'a"b'}) + "\n\n" + dumps(traces[1].to_dict()) + "\n")
    assert _fast_keys(odd.read_bytes(), odd.stat().st_size) is None  # falls back to the JSON parse
    assert scan(odd).done == {('a"b', 0), ("p1", 2)}
