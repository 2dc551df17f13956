"""Each stage's options declared once, as a request dataclass, and read from the command line two ways.

* :func:`stage_method` turns ``run(trainer, model, request)`` into the Trainer method LightningCLI exposes as
  ``w2sr <stage>``: its signature is generated from the request's fields (jsonargparse reads ``__signature__``) and its
  ``Args:`` section from their docstrings, so ``--problems``, ``--sampling.n`` ... and their help are written once, in
  the dataclass of the stage package (e.g. ``w2sr.generation.stage.GenerateRequest``).
* :func:`parse_request` reads the same request with a plain jsonargparse parser (``python -m w2sr.report``): the same
  options, types, defaults, help and list syntax as the LightningCLI subcommand, without starting Lightning.

:func:`gather_lists` lets list options take space-separated values (``--runs a b``) in both.
Exercised by ``w2sr generate --help``, ``python -m w2sr.report --help`` and
``pytest tests/runtime/test_command_line.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from w2sr.records.options import args_section

R = TypeVar("R")

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule, LightningModule, Trainer

    StageRun = Callable[[Trainer, LightningModule | None, R], None]  # a stage method: (trainer, model, request)


LIST_OPTIONS = ("--predictions", "--runs", "--fit_runs")  # options that take several space-separated values


def gather_lists(argv: Sequence[str]) -> list[str]:
    """``--runs a.json b.json`` -> ``--runs [a.json,b.json]`` (jsonargparse wants one value per option).

    >>> gather_lists(["report", "--runs", "a.json", "b.json", "--base", "a"])
    ['report', '--runs', '[a.json,b.json]', '--base', 'a']
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in LIST_OPTIONS:
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                values.append(argv[i + 1])
                i += 1
            if len(values) == 1:
                out.append(values[0])
            elif values:
                out.append("[" + ",".join(values) + "]")
        i += 1
    return out


def request_parameters(request_type: type) -> list[inspect.Parameter]:
    """The request's fields as keyword-only parameters with their resolved types and defaults."""
    hints = typing.get_type_hints(request_type)
    params = []
    for item in dataclasses.fields(request_type):
        if item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            default = inspect.Parameter.empty
        params.append(
            inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[item.name])
        )
    return params


def stage_method(request_type: type[R]) -> Callable[[StageRun[R]], Callable[..., None]]:
    """Decorator for a Trainer method ``run(self, model, request)``: LightningCLI sees a method whose parameters are
    the request's fields (plus the ``model`` and ``datamodule`` it always passes), and ``run`` gets the request built
    from them. ``method.request_type`` names the dataclass."""

    def decorate(run: StageRun[R]) -> Callable[..., None]:
        def method(
            self: Trainer,
            model: LightningModule | None = None,
            datamodule: LightningDataModule | None = None,
            **options: object,
        ) -> None:
            return run(self, model, request_type(**options))

        method.__name__, method.__qualname__, method.__module__ = run.__name__, run.__qualname__, run.__module__
        method.__doc__ = inspect.cleandoc(run.__doc__ or "") + "\n\n" + args_section(request_type)
        context = [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None if name != "self" else inspect.Parameter.empty,
            )
            for name in ("self", "model", "datamodule")
        ]
        method.__signature__ = inspect.Signature([*context, *request_parameters(request_type)])  # type: ignore[attr-defined]
        method.request_type = request_type  # type: ignore[attr-defined]
        return method

    return decorate


def request_parser(request_type: type, prog: str, description: str) -> ArgumentParser:
    """A jsonargparse parser of the request's fields (``--config FILE`` included), each with its docstring as help."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
    parser.add_class_arguments(request_type, fail_untyped=True)
    return parser


def parse_request(request_type: type[R], argv: Sequence[str] | None, prog: str, description: str) -> R:
    """The request from a command line (``sys.argv[1:]`` when ``argv`` is None) read by :func:`request_parser`;
    list options may take space-separated values (:func:`gather_lists`)."""
    parser = request_parser(request_type, prog, description)
    config = parser.instantiate_classes(parser.parse_args(gather_lists(sys.argv[1:] if argv is None else argv)))
    return request_type(**{item.name: config[item.name] for item in dataclasses.fields(request_type)})
