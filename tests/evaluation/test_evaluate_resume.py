"""``w2sr evaluate --resume true`` (issue 26, item 1): samples streamed per problem into
``<output_dir>/generations/``, an interrupted run's leftovers refused without ``--resume`` and resumed with it (same
settings only), a resumed run's results.json equal to an uninterrupted run's, and a real SIGKILL of a real
``w2sr evaluate`` process on the tiny model followed by a resumed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from w2sr.evaluation.run import EvalTask, run_evaluation
from w2sr.evaluation.streams import generations_dir, stream_path
from w2sr.generation.base import SamplingOptions
from w2sr.generation.engines import run_jobs
from w2sr.generation.toy import ToyTeacherBackend
from w2sr.records.jsonl import InputError, OutputExistsError, read_jsonl
from w2sr.records.prompts import PromptOptions
from w2sr.toy import make_problems, write_toy_data
from w2sr.verification.grade import VerifyOptions

REPO = Path(__file__).resolve().parents[2]
QUIET = Console(file=open(os.devnull, "w"))  # noqa: SIM115 (for the whole module)
TIMING = {"timing_s"}


class Crash(RuntimeError):
    pass


class CrashingToy(ToyTeacherBackend):
    """The toy teacher, one problem per call, failing after ``after`` problems (a crash in mid-run)."""

    def __init__(self, tokenizer, after: int) -> None:
        super().__init__(tokenizer)
        self.after, self.calls = after, 0

    def generate(self, requests, sampling):
        outputs = []
        for request in requests:
            if self.calls >= self.after:
                raise Crash("engine died")
            self.calls += 1
            outputs.extend(super().generate([request], sampling))
        return outputs


def tasks() -> list[EvalTask]:
    sampled = SamplingOptions(n=2, temperature=1.0, batch_size=1)
    return [
        EvalTask("toy/a", make_problems(5, 1, "test"), sampled),  # a name that is not a file name
        EvalTask("toy-b", make_problems(4, 2, "test"), SamplingOptions(batch_size=1)),
    ]


def evaluate(backend, tokenizer, out: Path, **kwargs) -> dict:
    return run_evaluation(
        backend,
        tokenizer,
        tasks(),
        out,
        prompt=PromptOptions(),
        verify=VerifyOptions(workers=1),
        model_label="toy-teacher",
        backend_name="toy",
        console=QUIET,
        **kwargs,
    )


def without_timing(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in TIMING}


def test_interrupted_run_is_refused_then_resumed_to_the_uninterrupted_results(tmp_path, tiny_tokenizer, capsys):
    reference = evaluate(ToyTeacherBackend(tiny_tokenizer), tiny_tokenizer, tmp_path / "ref")
    assert not generations_dir(tmp_path / "ref").exists()  # removed once results.json is written

    out = tmp_path / "run"
    with pytest.raises(Crash):
        evaluate(CrashingToy(tiny_tokenizer, after=7), tiny_tokenizer, out)
    assert "run the same command again with --resume true" in capsys.readouterr().err
    assert not (out / "results.json").exists()
    first, second = stream_path(out, "toy/a"), stream_path(out, "toy-b")
    assert first.parent == generations_dir(out) and first.name.startswith("toy_a-")
    assert len(read_jsonl(first)) == 10 and len(read_jsonl(second)) == 2  # streamed problem by problem
    with first.open("a") as handle:
        handle.write('{"id": "toy-arith-test-s1-0')  # what a kill in the middle of a write leaves

    with pytest.raises(OutputExistsError, match="--resume true to continue"):
        evaluate(ToyTeacherBackend(tiny_tokenizer), tiny_tokenizer, out)
    with pytest.raises(InputError, match="other settings"):
        evaluate(ToyTeacherBackend(tiny_tokenizer), tiny_tokenizer, out, resume=True, quantization="nf4")

    backend = CrashingToy(tiny_tokenizer, after=100)
    resumed = evaluate(backend, tiny_tokenizer, out, resume=True)
    assert backend.calls == 2  # only the problems the crash left undone
    assert without_timing(resumed) == without_timing(reference)
    written = [json.loads((folder / "results.json").read_text()) for folder in (out, tmp_path / "ref")]
    assert without_timing(written[0]) == without_timing(written[1])
    assert read_jsonl(out / "predictions.jsonl") == read_jsonl(tmp_path / "ref" / "predictions.jsonl")
    card = json.loads((out / "predictions.jsonl.card.json").read_text())
    assert (card["samples"], card["resumed_samples"]) == (2, 12)
    assert not generations_dir(out).exists()
    with pytest.raises(OutputExistsError, match="complete"):
        evaluate(ToyTeacherBackend(tiny_tokenizer), tiny_tokenizer, out, resume=True)


def test_a_resumed_run_with_everything_generated_loads_no_model(tmp_path, tiny_tokenizer, monkeypatch):
    """Stopped after the last sample (while grading): the rerun only grades and scores."""
    import w2sr.evaluation.run

    out = tmp_path / "run"
    reference = evaluate(ToyTeacherBackend(tiny_tokenizer), tiny_tokenizer, tmp_path / "ref")
    with monkeypatch.context() as patch:
        patch.setattr(w2sr.evaluation.run, "verify_records", lambda *args: (_ for _ in ()).throw(Crash("grader")))
        with pytest.raises(Crash):
            evaluate(ToyTeacherBackend(tiny_tokenizer), tiny_tokenizer, out)
    assert len(read_jsonl(stream_path(out, "toy-b"))) == 4

    def no_engine():
        raise AssertionError("the engine was built")

    resumed = run_evaluation(
        None,
        None,
        tasks(),
        out,
        prompt=PromptOptions(),
        verify=VerifyOptions(workers=1),
        model_label="toy-teacher",
        backend_name="toy",
        console=QUIET,
        resume=True,
        generate=lambda jobs: run_jobs(jobs, no_engine),
    )
    assert without_timing(resumed) == without_timing(reference)


def test_overwrite_starts_again_and_resume_with_overwrite_is_refused(tmp_path, tiny_tokenizer):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        evaluate(CrashingToy(tiny_tokenizer, after=3), tiny_tokenizer, out)
    with pytest.raises(InputError, match="choose one"):
        evaluate(ToyTeacherBackend(tiny_tokenizer), tiny_tokenizer, out, resume=True, overwrite=True)
    backend = CrashingToy(tiny_tokenizer, after=100)
    evaluate(backend, tiny_tokenizer, out, overwrite=True)
    assert backend.calls == 9  # everything again


# ------------------------------------------------------------------------------- a real SIGKILL of the CLI
def _evaluate_cli(model: str, problems: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "w2sr.cli",
        "evaluate",
        "--model.model_name_or_path",
        model,
        "--problems",
        str(problems),
        "--output_dir",
        str(out),
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
def test_sigkill_of_w2sr_evaluate_then_resume_gives_the_uninterrupted_results(tmp_path, tiny_model, capsys):
    from w2sr.cli import main

    write_toy_data(str(tmp_path / "toy"), n_train=4, n_test=16)
    problems = tmp_path / "toy" / "test.jsonl"
    out, ref = tmp_path / "out", tmp_path / "ref"
    stream = stream_path(out, "toy-arith")  # the problems' source names the benchmark
    proc = subprocess.Popen(
        _evaluate_cli(tiny_model, problems, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if stream.exists() and stream.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    kept = stream.read_text().count("\n")
    assert 3 <= kept < 16 and not (out / "results.json").exists()  # killed mid-run
    for extra, message in (  # refused (exit 2) before any model is loaded: checked in this process
        ((), "--resume true to continue"),
        (("--resume", "true", "--sampling.max_new_tokens", "20"), "other settings"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(_evaluate_cli(tiny_model, problems, out, *extra)[3:])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    run = subprocess.run(
        _evaluate_cli(tiny_model, problems, out, "--resume", "true"), env=_env(), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    card = json.loads((out / "predictions.jsonl.card.json").read_text())
    assert (card["resumed_samples"], card["samples"]) == (kept, 16 - kept)
    run = subprocess.run(_evaluate_cli(tiny_model, problems, ref), env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    resumed, reference = (json.loads((d / "results.json").read_text()) for d in (out, ref))
    assert without_timing(resumed) == without_timing(reference)
    assert read_jsonl(out / "predictions.jsonl") == read_jsonl(ref / "predictions.jsonl")
