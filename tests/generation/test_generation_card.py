"""The generation card beside every output (generate and evaluate) and the rich progress line."""

from __future__ import annotations

import json

from rich.console import Console

from w2sr.cli import main
from w2sr.evaluation.run import EvalTask, run_evaluation
from w2sr.generation.base import SamplingOptions
from w2sr.generation.run import generation_progress
from w2sr.generation.toy import ToyTeacherBackend
from w2sr.records.jsonl import read_jsonl
from w2sr.records.prompts import PromptOptions
from w2sr.toy import make_problems, write_toy_data
from w2sr.verification.grade import VerifyOptions

CARD_KEYS = {
    "model",
    "adapter",
    "backend",
    "prompt",
    "sampling",
    "seed",
    "versions",
    "problems",
    "samples",
    "tokens_generated",
    "truncation_rate",
    "capped_prompts",
    "skipped_prompts",
    "wall_time_s",
    "tokens_per_s",
    "fingerprint",
    "complete",
}


def test_generate_card_describes_the_run(tmp_path, tiny_model):
    write_toy_data(str(tmp_path / "toy"), n_train=6, n_test=2)
    out = tmp_path / "traces.jsonl"
    main(
        [
            "generate",
            "--model.model_name_or_path",
            tiny_model,
            "--backend",
            "toy",
            "--problems",
            str(tmp_path / "toy" / "train.jsonl"),
            "--output",
            str(out),
            "--sampling.n",
            "2",
            "--sampling.temperature",
            "1.0",
            "--sampling.max_new_tokens",
            "55",
            "--sampling.seed",
            "5",
            "--prompt.system",
            "Be brief.",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    rows = read_jsonl(out)
    card = json.loads((tmp_path / "traces.jsonl.card.json").read_text())
    assert CARD_KEYS <= set(card) and card["complete"] is True
    assert (card["model"], card["adapter"], card["backend"], card["seed"]) == (tiny_model, None, "toy", 5)
    assert card["prompt"]["template"] == "qwen-base" and card["prompt"]["system"] == "Be brief."
    assert card["sampling"]["n"] == 2 and card["sampling"]["max_new_tokens"] == 55
    assert (card["problems"], card["samples"]) == (6, 12) == (len({r["id"] for r in rows}), len(rows))
    assert card["tokens_generated"] == sum(r["completion_tokens"] for r in rows)
    truncated = sum(r["finish_reason"] == "length" for r in rows)
    assert 0 < truncated < 12 and card["truncation_rate"] == truncated / 12
    assert (card["capped_prompts"], card["skipped_prompts"]) == (0, 0)
    assert card["wall_time_s"] >= 0 and card["versions"]["torch"] and card["versions"]["w2sr"]


def test_evaluate_writes_a_card_beside_predictions(tmp_path, tiny_tokenizer):
    backend = ToyTeacherBackend(tiny_tokenizer)
    problems = make_problems(4, 0, "test")
    run_evaluation(
        backend,
        tiny_tokenizer,
        [EvalTask("toy", problems, SamplingOptions(n=2, temperature=1.0))],
        tmp_path,
        prompt=PromptOptions(),
        verify=VerifyOptions(workers=1),
        model_label="toy-teacher",
        console=Console(file=open("/dev/null", "w")),
    )
    card = json.loads((tmp_path / "predictions.jsonl.card.json").read_text())
    assert CARD_KEYS <= set(card)
    assert (card["model"], card["backend"], card["problems"], card["samples"]) == ("toy-teacher", "toy", 4, 8)
    assert card["tokens_generated"] == sum(r["completion_tokens"] for r in read_jsonl(tmp_path / "predictions.jsonl"))


def test_progress_shows_problems_tokens_per_second_and_eta():
    console = Console(record=True, width=120, force_terminal=True)
    with generation_progress(True, console) as bar:
        task = bar.add_task("generating", total=10, tps=0.0)
        bar.update(task, advance=4, tps=1234.5)
    text = console.export_text()
    assert "4/10" in text and "problems" in text and "1234.5 tok/s" in text and "ETA" in text
