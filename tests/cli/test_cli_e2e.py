"""End to end on the tiny offline model: generate -> verify -> fit -> evaluate through the w2sr CLI."""

from __future__ import annotations

import json

import pytest

from w2sr.cli import main
from w2sr.records.jsonl import read_jsonl
from w2sr.toy import write_toy_data

pytestmark = pytest.mark.slow
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


def test_four_stages(tmp_path, tiny_model):
    data = tmp_path / "toy"
    write_toy_data(str(data), n_train=64, n_test=8)
    traces, verified, run = tmp_path / "traces.jsonl", tmp_path / "verified.jsonl", tmp_path / "run"
    main(
        [
            "generate",
            "--model.model_name_or_path",
            tiny_model,
            "--backend",
            "toy",
            "--problems",
            str(data / "train.jsonl"),
            "--output",
            str(traces),
            "--sampling.n",
            "2",
            "--sampling.temperature",
            "1.0",
            *QUIET,
        ]
    )
    rows = read_jsonl(traces)
    assert len(rows) == 128 and {r["sample"] for r in rows} == {0, 1}

    main(
        [
            "verify",
            "--input",
            str(traces),
            "--output",
            str(verified),
            "--split",
            str(tmp_path / "splits"),
            "--summary",
            str(tmp_path / "summary.json"),
            *QUIET,
        ]
    )
    rows = read_jsonl(verified)
    assert all(r["correct"] in (True, False) for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    n_correct = sum(r["correct"] for r in rows)
    assert 0 < n_correct < 128
    # W2SR-P: every correct trace, exact-duplicate completions of a problem once (issue 26.5; the toy teacher at
    # T 1.0 often writes the same completion twice)
    distinct_correct = {(r["id"], r["completion"]) for r in rows if r["correct"]}
    assert len(read_jsonl(tmp_path / "splits" / "w2sr_p.jsonl")) == len(distinct_correct)
    assert summary["curation"]["sets"]["W2SR-P"] == len(distinct_correct)
    assert summary is not None

    main(
        [
            "fit",
            "--model.model_name_or_path",
            tiny_model,
            "--model.finetune",
            "lora",
            "--model.export_dir",
            str(run / "export"),
            "--data.train_file",
            str(verified),
            "--data.variant",
            "correct",
            "--data.batch_size",
            "8",
            "--data.val_fraction",
            "0.2",
            "--trainer.max_steps",
            "3",
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            str(run),
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.callbacks+=w2sr.callbacks.ReasoningAccuracy",
            "--trainer.callbacks.every_n_steps=2",
            "--trainer.callbacks.num_problems=4",
            "--trainer.callbacks.max_new_tokens=8",
            *QUIET,
        ]
    )
    export = run / "export"
    assert (export / "adapter_config.json").is_file() and (export / "adapter_model.safetensors").is_file()

    for name, extra in (("base", []), ("adapter", ["--model.adapter_path", str(export)])):
        main(
            [
                "evaluate",
                "--model.model_name_or_path",
                tiny_model,
                *extra,
                "--problems",
                str(data / "test.jsonl"),
                "--output_dir",
                str(tmp_path / name),
                "--sampling.max_new_tokens",
                "8",
                *QUIET,
            ]
        )
        results = json.loads((tmp_path / name / "results.json").read_text())
        (scores,) = results["benchmarks"].values()
        assert scores["samples"] == 8 and scores["avg@n"] is not None
        assert len(read_jsonl(tmp_path / name / "predictions.jsonl")) == 8
    assert json.loads((tmp_path / "adapter" / "results.json").read_text())["model"].endswith(str(export))
