"""Config mistakes: every unknown option name of a ``w2sr`` command, on the command line and in its ``--config``
files, reported at once with the closest valid name, instead of jsonargparse's first error after a 60-line usage.

``W2SRCLI.parse_arguments`` parses through :func:`parse_or_explain`: when parsing fails, the command's option names
are read from its parser; each ``--name`` given and each key of the ``--config`` files that names no option (and is
not under an option that takes a class, such as ``model.optimizer`` or ``trainer.callbacks``, whose keys depend on
the class chosen) is listed with a "did you mean" from :mod:`difflib`. A mistake of another kind (a wrong value, a
missing required option) comes as jsonargparse words it, without the usage. Either way: exit 2 before anything runs.
Exercised by ``w2sr generate --sampling.temprature 0.5`` and ``pytest tests/runtime/test_config_check.py``.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2sr.records.jsonl import InputError

SPECIAL = {"config", "print_config", "help", "h"}


class ConfigMistakes(InputError):
    """One or more option mistakes of a command (the message lists them all)."""


@dataclass(frozen=True)
class Mistake:
    """An option name the command does not have."""

    name: str
    """As given: ``--sampling.temprature`` on the command line, ``sampling.temprature`` in a file."""
    where: str
    """``command line`` or the config file's path."""
    suggestion: str | None
    """The closest valid name, spelled the way ``name`` is (with ``--`` on the command line)."""

    def line(self) -> str:
        hint = f"; did you mean {self.suggestion}?" if self.suggestion else ""
        kind = "option" if self.name.startswith("-") else "key"
        return f"{self.name} ({self.where}): no such {kind}{hint}"


def stage_parsers(parser: Any) -> dict[str, Any]:
    """Each subcommand's parser (``fit``, ``generate``, ...) of the root parser."""
    for action in getattr(parser, "_actions", []):
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_names(parser: Any) -> tuple[set[str], set[str]]:
    """``(names, open)``: every option name of ``parser`` without ``--`` (``sampling.max_new_tokens``,
    ``model.lora``, ...), and those that take a class (they have a ``NAME.help`` companion) whose own keys depend on
    the class chosen."""
    names = {s[2:] for a in getattr(parser, "_actions", []) for s in a.option_strings if s.startswith("--")}
    return names, {name[: -len(".help")] for name in names if name.endswith(".help")}


def _known(name: str, names: set[str], open_names: set[str]) -> bool:
    return name in names or any(name.startswith(prefix + ".") for prefix in open_names)


def _suggest(name: str, names: set[str], open_names: set[str]) -> str | None:
    candidates = [n for n in names if not n.endswith(".help") and n not in SPECIAL]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def command_line_mistakes(argv: list[str], names: set[str], open_names: set[str]) -> list[Mistake]:
    """The ``--options`` of one command's arguments that it does not have."""
    found = []
    for word in argv:
        if not word.startswith("--") or word == "--":
            continue
        name = word[2:].split("=", 1)[0].rstrip("+")
        if not _known(name, names, open_names):
            close = _suggest(name, names, open_names)
            found.append(Mistake("--" + name, "command line", "--" + close if close else None))
    return found


def config_files(argv: list[str]) -> list[str]:
    """The ``--config`` files among one command's arguments, in order."""
    files = []
    for i, word in enumerate(argv):
        if word == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif word.startswith("--config="):
            files.append(word.split("=", 1)[1])
    return files


def file_mistakes(path: str, names: set[str], open_names: set[str]) -> list[Mistake]:
    """The keys of a YAML/JSON config file that name no option (nested groups followed, class options not)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []  # jsonargparse's own error says what is wrong with the file
    found: list[Mistake] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in open_names or any(name.startswith(p + ".") for p in open_names):
                continue
            group = any(n.startswith(name + ".") for n in names)
            if group and isinstance(value, dict):
                walk(value, name + ".")
            elif name not in names:
                found.append(Mistake(name, path, _suggest(name, names, open_names)))

    if isinstance(data, dict):
        walk(data, "")
    return found


def _class_path_given(key: str, argv: list[str]) -> str | None:
    """The class a training stage's ``model:`` / ``data:`` names: the last ``--model``, ``--model.class_path`` or
    ``model: {class_path: ...}`` of the ``--config`` files, in the order jsonargparse applies them."""
    import yaml

    given = None
    for i, word in enumerate(argv):
        if word == "--config" and i + 1 < len(argv):
            try:
                data = yaml.safe_load(Path(argv[i + 1]).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            node = data.get(key) if isinstance(data, dict) else None
            if isinstance(node, str):
                given = node
            elif isinstance(node, dict) and isinstance(node.get("class_path"), str):
                given = node["class_path"]
        elif word in (f"--{key}", f"--{key}.class_path") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            given = argv[i + 1]
        elif word.startswith((f"--{key}=", f"--{key}.class_path=")):
            given = word.split("=", 1)[1]
    return given


def class_option_names(key: str, class_path: str) -> tuple[set[str], set[str]] | None:
    """``(names, open)`` of a class option (``fit``'s ``model:`` / ``data:``) for the class ``class_path``, in both
    spellings a user may write (``model.lora.r`` and ``model.init_args.lora.r``); None when the class cannot be
    imported (jsonargparse's own error then speaks)."""
    import importlib

    from jsonargparse import ArgumentParser

    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, key)
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    names, open_names = option_names(parser)
    prefix = key + "."
    spelled = {n for n in names if n.startswith(prefix)}
    spelled |= {f"{key}.init_args.{n[len(prefix) :]}" for n in spelled}
    opened = open_names | {f"{key}.init_args.{n[len(prefix) :]}" for n in open_names if n.startswith(prefix)}
    return spelled | {key, f"{key}.class_path", f"{key}.init_args", f"{key}.help"}, opened


def expand_class_options(
    names: set[str], open_names: set[str], argv: list[str], class_defaults: dict[str, str]
) -> tuple[set[str], set[str]]:
    """``names`` and ``open_names`` with each class option of ``class_defaults`` (``{"model": "w2sr....Student"}``)
    replaced by the option names of the class chosen (given in ``argv`` / its ``--config`` files, else the default),
    so that ``--model.lora.rank`` gets its "did you mean" and ``--model.rl.num_generation`` is not taken as an
    abbreviation of ``num_generations``."""
    names, open_names = set(names), set(open_names)
    for key, default in class_defaults.items():
        found = class_option_names(key, _class_path_given(key, argv) or default)
        if found is not None and key in open_names:
            open_names.discard(key)
            names |= found[0]
            open_names |= found[1]
    return names, open_names


def mistakes_of(
    parser: Any, argv: list[str], class_options: dict[str, dict[str, str]] | None = None
) -> tuple[str, list[Mistake]]:
    """``(command, mistakes)``: the unknown option names of ``argv`` (the root parser's arguments), command line and
    ``--config`` files; ``class_options``: stage -> its class options and their default classes (``fit``'s
    ``model`` / ``data``), whose names come from the class chosen."""
    stages = stage_parsers(parser)
    position = next((i for i, word in enumerate(argv) if word in stages), None)
    stage = argv[position] if position is not None else None
    command = f"w2sr {stage}" if stage else "w2sr"
    own = argv[position + 1 :] if position is not None else argv
    names, open_names = option_names(stages[stage] if stage else parser)
    if stage in (class_options or {}):
        names, open_names = expand_class_options(names, open_names, own, class_options[stage])
    mistakes = command_line_mistakes(own, names, open_names)
    for path in config_files(own):
        mistakes += file_mistakes(path, names, open_names)
    return command, mistakes


def explain(
    parser: Any, argv: list[str], error: str | None, class_options: dict[str, dict[str, str]] | None = None
) -> str | None:
    """The message for a parse of ``argv`` (the root parser's arguments): all unknown names, else the parser's own
    ``error`` (None: the parse succeeded, and only unknown names make a message), and where to look."""
    command, mistakes = mistakes_of(parser, argv, class_options)
    help_line = f"`{command} --help` lists its options."
    if not mistakes:
        return f"{' '.join(error.split())}\n{help_line}" if error is not None else None
    count = f"{len(mistakes)} mistakes" if len(mistakes) > 1 else "a mistake"
    lines = [f"{count} in the options of {command}, nothing was run:"]
    lines += [f"  {mistake.line()}" for mistake in mistakes]
    return "\n".join([*lines, help_line])


def parse_or_explain(parser: Any, argv: list[str], class_options: dict[str, dict[str, str]] | None = None) -> Any:
    """``parser.parse_args(argv)``; on a mistake :class:`ConfigMistakes` (exit 2) with :func:`explain`'s message.
    A stage of ``class_options`` is checked after a successful parse too: jsonargparse parses a class option's
    arguments with abbreviations allowed, so ``--model.rl.num_generation 2`` would set ``num_generations``."""
    parsers = [parser, *stage_parsers(parser).values()]
    saved = [each.exit_on_error for each in parsers]
    for each in parsers:
        each.exit_on_error = False  # jsonargparse then raises instead of printing the usage and exiting
    try:
        parsed = parser.parse_args(argv)
    except argparse.ArgumentError as err:
        raise ConfigMistakes(explain(parser, argv, str(err), class_options)) from None
    finally:
        for each, value in zip(parsers, saved):
            each.exit_on_error = value
    stage = next((word for word in argv if word in (class_options or {})), None)
    keys = tuple(f"--{key}." for key in (class_options or {}).get(stage, {}))
    if keys and any(word.startswith(keys) for word in argv):  # only the command line abbreviates
        message = explain(parser, argv, None, class_options)
        if message is not None:
            raise ConfigMistakes(message)
    return parsed
