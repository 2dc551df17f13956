"""w2sr.runtime.config_check against the real ``w2sr`` parser: what counts as an unknown name (nested groups in config
files followed; options that take a class, whose keys depend on the class, left alone) and the closest name offered.
The command itself: tests/cli/test_first_run.py."""

from __future__ import annotations

import contextlib

import pytest

from w2sr.cli import DEFAULT_DATA, DEFAULT_MODEL
from w2sr.runtime.config_check import (
    ConfigMistakes,
    expand_class_options,
    option_names,
    parse_or_explain,
    stage_parsers,
)

# fit's model: / data: take a class (the RL arm's subclass mode): their names are the chosen class's
CLASSES = {"fit": {"model": DEFAULT_MODEL, "data": DEFAULT_DATA}}


@pytest.fixture(scope="module")
def parser():
    import w2sr.cli as cli

    class Built(Exception):
        pass

    built = {}

    def keep(self, parser, args):
        built["parser"] = parser
        raise Built

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.W2SRCLI, "parse_arguments", keep)
        with contextlib.suppress(Built):
            cli.main(args=[])
    return built["parser"]


def test_class_options_are_open_and_groups_are_followed(parser, tmp_path):
    names, open_names = option_names(stage_parsers(parser)["fit"])
    assert {"model", "data"} <= open_names and "model.lora.r" not in names
    names, open_names = expand_class_options(names, open_names, [], CLASSES["fit"])
    assert {"model.optimizer", "trainer.callbacks", "trainer.logger"} <= open_names
    assert "model.lora.r" in names and "data.train_file" in names
    config = tmp_path / "fit.yaml"
    config.write_text(
        "model:\n  optimizer:\n    class_path: torch.optim.AdamW\n    init_args: {lr: 0.1, betaz: [0.9, 0.9]}\n"
        "  lora: {r: 4, alhpa: 8}\ntrainer:\n  callbacks: [{class_path: x.Y, init_args: {anything: 1}}]\n"
        "  max_step: 3\ndata: {train_file: t.jsonl}\n"
    )
    with pytest.raises(ConfigMistakes) as err:
        parse_or_explain(
            parser, ["fit", "--config", str(config), "--model.optimizer.lr", "0.2", "--data.batchsize", "2"], CLASSES
        )
    message = str(err.value)
    assert "3 mistakes in the options of w2sr fit" in message
    assert "--data.batchsize (command line): no such option; did you mean --data.batch_size?" in message
    assert f"model.lora.alhpa ({config}): no such key; did you mean model.lora.alpha?" in message
    assert f"trainer.max_step ({config}): no such key; did you mean trainer.max_steps?" in message
    assert "betaz" not in message and "anything" not in message  # under class options: the class decides


def test_a_name_far_from_every_option_gets_no_guess(parser):
    with pytest.raises(ConfigMistakes) as err:
        parse_or_explain(parser, ["verify", "--input", "a.jsonl", "--output", "b.jsonl", "--zzz", "1"])
    assert "--zzz (command line): no such option\n" in str(err.value) and "did you mean" not in str(err.value)
