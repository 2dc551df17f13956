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


def explain(parser: Any, argv: list[str], error: str) -> str:
    """The message for a failed parse of ``argv`` (the root parser's arguments): all unknown names, else the
    parser's own error, and where to look."""
    stages = stage_parsers(parser)
    position = next((i for i, word in enumerate(argv) if word in stages), None)
    stage = argv[position] if position is not None else None
    command = f"w2sr {stage}" if stage else "w2sr"
    own = argv[position + 1 :] if position is not None else argv
    names, open_names = option_names(stages[stage] if stage else parser)
    mistakes = command_line_mistakes(own, names, open_names)
    for path in config_files(own):
        mistakes += file_mistakes(path, names, open_names)
    help_line = f"`{command} --help` lists its options."
    if not mistakes:
        return f"{' '.join(error.split())}\n{help_line}"
    count = f"{len(mistakes)} mistakes" if len(mistakes) > 1 else "a mistake"
    lines = [f"{count} in the options of {command}, nothing was run:"]
    lines += [f"  {mistake.line()}" for mistake in mistakes]
    return "\n".join([*lines, help_line])


def parse_or_explain(parser: Any, argv: list[str]) -> Any:
    """``parser.parse_args(argv)``; on a mistake :class:`ConfigMistakes` (exit 2) with :func:`explain`'s message."""
    parsers = [parser, *stage_parsers(parser).values()]
    saved = [each.exit_on_error for each in parsers]
    for each in parsers:
        each.exit_on_error = False  # jsonargparse then raises instead of printing the usage and exiting
    try:
        return parser.parse_args(argv)
    except argparse.ArgumentError as err:
        raise ConfigMistakes(explain(parser, argv, str(err))) from None
    finally:
        for each, value in zip(parsers, saved):
            each.exit_on_error = value
