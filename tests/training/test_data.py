"""TraceDataModule: labels built at tokenization, prompt masked, end-of-turn trained, split by problem id."""

from __future__ import annotations

import pytest
from conftest import make_traces

from w2sr.records.jsonl import InputError
from w2sr.records.prompts import render_prompt
from w2sr.training.datamodule import IGNORE_INDEX, PadCollator, TraceDataModule, in_validation, tokenize_trace


def test_labels_mask_prompt_and_keep_completion_and_end_of_turn(tiny_tokenizer):
    for trace in make_traces(20):
        example = tokenize_trace(tiny_tokenizer, trace)
        assert len(example.input_ids) == len(example.labels)
        # every label is -100 or equals its input id
        assert all(label in (IGNORE_INDEX, tok) for tok, label in zip(example.input_ids, example.labels))
        prompt_ids = tiny_tokenizer(render_prompt(tiny_tokenizer, trace.prompt), add_special_tokens=False)["input_ids"]
        n = len(prompt_ids)
        assert example.input_ids[:n] == prompt_ids  # the exact ids the model is given at generation time
        assert all(label == IGNORE_INDEX for label in example.labels[:n])
        assert all(label != IGNORE_INDEX for label in example.labels[n:])
        trained = tiny_tokenizer.decode(example.labels[n:])
        assert trained == trace.completion + "<|im_end|>\n"
        assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") in example.labels[n:]


def test_collator_pads_right_with_ignored_labels(tiny_tokenizer):
    examples = [tokenize_trace(tiny_tokenizer, t) for t in make_traces(3)]
    batch = PadCollator(pad_id=tiny_tokenizer.pad_token_id)(examples)
    width = max(len(e.input_ids) for e in examples)
    assert batch["input_ids"].shape == (3, width)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()


def test_split_by_problem_id_and_variants(traces_file, tiny_model):
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, val_fraction=0.3, batch_size=4)
    dm.setup("fit")
    train_ids = {e.problem_id for e in dm.train_examples}
    val_ids = {e.problem_id for e in dm.val_examples}
    assert train_ids and val_ids and not train_ids & val_ids
    assert len(dm.validation_problems()) == len(val_ids)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4
    correct = TraceDataModule(str(traces_file), tokenizer=tiny_model, variant="correct", val_fraction=0.0)
    correct.setup("fit")
    n_correct = sum(t.correct for t in make_traces())
    assert len(correct.train_examples) == n_correct < 40


def test_split_is_stable():
    ids = [f"p{i}" for i in range(1000)]
    first = [in_validation(i, 0.1, 0) for i in ids]
    assert first == [in_validation(i, 0.1, 0) for i in ids]
    assert 50 < sum(first) < 150


def test_overlong_examples_are_dropped_not_truncated(traces_file, tiny_model, tiny_tokenizer):
    lengths = sorted(len(tokenize_trace(tiny_tokenizer, t).input_ids) for t in make_traces())
    cutoff = lengths[len(lengths) // 2]
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, val_fraction=0.0, max_seq_length=cutoff)
    dm.setup("fit")
    assert dm.stats["train_dropped_too_long"] == sum(n > cutoff for n in lengths) > 0
    assert all(len(e.input_ids) <= cutoff for e in dm.train_examples)
    assert len(dm.train_examples) == sum(n <= cutoff for n in lengths)
    too_short = TraceDataModule(str(traces_file), tokenizer=tiny_model, val_fraction=0.0, max_seq_length=lengths[0] - 1)
    with pytest.raises(InputError, match="no training examples left"):
        too_short.setup("fit")


def test_missing_inputs_are_clear(tmp_path, tiny_model):
    with pytest.raises(InputError, match="data.train_file"):
        TraceDataModule(tokenizer=tiny_model).setup("fit")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1"}\n')
    with pytest.raises(InputError) as err:
        TraceDataModule(str(bad), tokenizer=tiny_model).setup("fit")
    assert err.value.line == 1 and err.value.field == "problem"


def test_validation_problems_do_not_depend_on_the_variant(traces_file, tiny_model):
    """W2SR, W2SR-P and W2SR-N runs are validated on the same held-out problems and traces."""
    held_out = {}
    for variant in ("all", "correct", "incorrect"):
        dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, variant=variant, val_fraction=0.3)
        dm.setup("fit")
        held_out[variant] = sorted(e.key for e in dm.val_examples)
        assert not {e.problem_id for e in dm.train_examples} & {e.problem_id for e in dm.val_examples}
    assert held_out["all"] == held_out["correct"] == held_out["incorrect"] and held_out["all"]


def _with_truncated(path, n_cut: int = 5):
    """Traces whose first ``n_cut`` were cut at the teacher's limit (finish_reason length)."""
    import dataclasses

    from w2sr.records.jsonl import write_jsonl

    traces = [
        dataclasses.replace(t, finish_reason="length", completion=t.completion[: len(t.completion) // 2])
        if i < n_cut
        else t
        for i, t in enumerate(make_traces())
    ]
    write_jsonl(path, (t.to_dict() for t in traces))
    return traces


def test_truncated_traces_are_kept_without_end_of_turn(tmp_path, tiny_model, tiny_tokenizer):
    traces = _with_truncated(tmp_path / "t.jsonl")
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    dm = TraceDataModule(str(tmp_path / "t.jsonl"), tokenizer=tiny_model, val_fraction=0.0, cache_dir=None)
    dm.setup("fit")
    assert dm.stats["train_kept_truncated"] == 5 and len(dm.train_examples) == 40
    by_key = {e.key: e for e in dm.train_examples}
    for trace in traces[:7]:
        example = by_key[f"{trace.problem.id}#{trace.sample}"]
        trained = tiny_tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
        if trace.finish_reason == "length":
            assert trained == trace.completion and im_end not in example.labels  # cut mid-thought: no stop taught
        else:
            assert trained == trace.completion + "<|im_end|>\n"
    dropped = TraceDataModule(
        str(tmp_path / "t.jsonl"), tokenizer=tiny_model, val_fraction=0.0, cache_dir=None, truncated="drop"
    )
    dropped.setup("fit")
    assert dropped.stats["train_dropped_truncated"] == 5 and len(dropped.train_examples) == 35


def test_too_long_truncate_cuts_and_counts(traces_file, tiny_model, tiny_tokenizer):
    lengths = [len(tokenize_trace(tiny_tokenizer, t).input_ids) for t in make_traces()]
    cutoff = sorted(lengths)[len(lengths) // 2]
    dm = TraceDataModule(
        str(traces_file),
        tokenizer=tiny_model,
        val_fraction=0.0,
        max_seq_length=cutoff,
        too_long="truncate",
        cache_dir=None,
    )
    dm.setup("fit")
    assert dm.stats["train_truncated_too_long"] == sum(n > cutoff for n in lengths) > 0
    assert len(dm.train_examples) == 40 and max(len(e.input_ids) for e in dm.train_examples) == cutoff
    full = {tuple(tokenize_trace(tiny_tokenizer, t).input_ids[:cutoff]) for t in make_traces()}
    assert all(tuple(e.input_ids) in full for e in dm.train_examples)  # a prefix of the full example
    with pytest.raises(InputError, match="data.too_long"):
        TraceDataModule(str(traces_file), tokenizer=tiny_model, too_long="cut")


def test_token_cache_is_read_back_and_keyed_by_options(traces_file, tiny_model, tmp_path):
    cache = tmp_path / "cache"

    def setup(**options):
        dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, val_fraction=0.2, cache_dir=str(cache), **options)
        dm.setup("fit")
        return dm

    first = setup()
    assert first.cache_hits == [False] and len(list(cache.glob("*.npz"))) == 1
    second = setup()
    assert second.cache_hits == [True]
    assert [(e.input_ids, e.labels, e.key) for e in second.train_examples] == [
        (e.input_ids, e.labels, e.key) for e in first.train_examples
    ]
    assert [e.key for e in second.val_examples] == [e.key for e in first.val_examples]
    assert setup(max_seq_length=100, too_long="truncate").cache_hits == [False]
    assert setup(use_chat_template=False).cache_hits == [False]
    assert setup(variant="correct").cache_hits == [True]  # the variant filters after tokenization
    with open(traces_file, "a") as handle:  # another file content, another key
        handle.write(open(traces_file).readline())
    assert setup().cache_hits == [False]
    assert len(list(cache.glob("*.npz"))) == 4


def test_fit_tokenizes_through_tokenize_trace(traces_file, tiny_model, tiny_tokenizer, monkeypatch):
    """One tokenization function for ``fit`` and the tests (issue 17, item 7): the datamodule calls
    ``tokenize_trace`` for every trace, and its examples are exactly what ``tokenize_trace`` returns."""
    import w2sr.training.datamodule as datamodule

    calls = []
    original = datamodule.tokenize_trace

    def spy(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(datamodule, "tokenize_trace", spy)
    dm = TraceDataModule(str(traces_file), tokenizer=tiny_model, val_fraction=0.0, cache_dir=None)
    dm.setup("fit")
    assert len(calls) == len(make_traces())
    expected = {f"{t.problem.id}#{t.sample}": original(tiny_tokenizer, t) for t in make_traces()}
    for example in dm.train_examples:
        want = expected[example.key]
        assert (example.input_ids, example.labels) == (want.input_ids, want.labels)


def test_truncated_traces_at_the_papers_limits_are_cut_to_fit(tmp_path, tiny_model, tiny_tokenizer):
    """The paper's 4,096 new tokens and 4,096-token cutoff, scaled down: every trace cut at the teacher's limit of
    ``limit`` new tokens is longer than ``max_seq_length = limit`` with its prompt. ``truncated: keep`` trains on
    it cut to fit (LLaMA-Factory's cutoff keeps the prompt and cuts the response), also under ``too_long: drop``;
    issue 26 item 8: all 40 were dropped, then "no training examples left"."""
    import dataclasses

    from w2sr.records.jsonl import write_jsonl

    limit = 96  # the teacher's limit and the cutoff alike (prompts are ~50 tokens)
    traces = [
        dataclasses.replace(t, finish_reason="length", completion=((t.completion + "\n") * 100)[:400])
        for t in make_traces()
    ]
    write_jsonl(tmp_path / "cut.jsonl", (t.to_dict() for t in traces))
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    dm = TraceDataModule(
        str(tmp_path / "cut.jsonl"), tokenizer=tiny_model, val_fraction=0.0, max_seq_length=limit, too_long="drop"
    )
    dm.setup("fit")
    assert dm.stats["train_kept_truncated"] == 40 and dm.stats["train_dropped_too_long"] == 0
    assert len(dm.train_examples) == 40
    for trace, example in zip(
        traces, sorted(dm.train_examples, key=lambda e: [t.problem.id for t in traces].index(e.problem_id))
    ):
        full = tokenize_trace(tiny_tokenizer, trace)
        assert len(full.input_ids) > limit and example.input_ids == full.input_ids[:limit]  # prompt whole, then cut
        assert example.labels[: full.prompt_length] == [IGNORE_INDEX] * full.prompt_length
        assert (
            example.labels[full.prompt_length :] == example.input_ids[full.prompt_length :]
            and im_end not in example.labels
        )
    # an untruncated trace over the limit is still dropped (too_long: drop): every trained token as the teacher wrote it
    write_jsonl(tmp_path / "stop.jsonl", (dataclasses.replace(t, finish_reason="stop").to_dict() for t in traces))
    stopped = TraceDataModule(
        str(tmp_path / "stop.jsonl"), tokenizer=tiny_model, val_fraction=0.0, max_seq_length=limit
    )
    with pytest.raises(InputError, match="no training examples left"):
        stopped.setup("fit")
