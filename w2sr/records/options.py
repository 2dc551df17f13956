"""Option groups as dataclasses: each field documented once, by the docstring right under it, and the one place that
turns a value that may be a dict or the dataclass into the other (and comma lists into lists).

* :func:`document_fields` (a class decorator) copies the field docstrings into an ``Args:`` section of the class
  docstring, where jsonargparse reads the ``--help`` text of each option. jsonargparse can read field docstrings by
  itself (``set_parsing_settings(docstring_parse_attribute_docstrings=True)``), but then it re-reads the source of
  every class it meets, Lightning's Trainer and torch's Module included, on every command: about 4 CPU-seconds per
  ``w2sr`` start on the 2-core test machine (measured). This reads only our option classes, once, at import.
* :func:`as_options` / :func:`as_dict`: an option group reaches the code as the dataclass when jsonargparse built it
  from the command line, but as a plain dict when it comes back from a checkpoint's hyper-parameters or ``meta.pt``.

Exercised by ``w2sr generate --help`` and ``pytest tests/records/test_options.py`` (which runs the examples below).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from w2sr.records.jsonl import InputError

T = TypeVar("T")


def as_options(value: T | Mapping[str, Any] | None, cls: type[T]) -> T:
    """The option group ``cls`` from an instance of it, a mapping of its fields, or None (its defaults).

    >>> from w2sr.records.problems import FieldMap
    >>> as_options({"problem": "question"}, FieldMap)
    FieldMap(problem='question', answer='answer', id='id')
    >>> as_options(None, FieldMap)
    FieldMap(problem='problem', answer='answer', id='id')
    """
    if isinstance(value, cls):
        return value
    return cls(**dict(value or {}))


def as_dict(value: object) -> dict[str, Any]:
    """A dataclass instance or a mapping as a plain dict (``{}`` for None).

    >>> from w2sr.records.problems import FieldMap
    >>> as_dict(FieldMap(id=None))
    {'problem': 'problem', 'answer': 'answer', 'id': None}
    >>> as_dict({"r": 8})
    {'r': 8}
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a dataclass instance or a mapping, got {type(value).__name__}")
    return dict(value)


def check_choice(value: object, choices: object, field: str) -> None:
    """Refuse (``InputError`` naming ``field``: exit 2) a value outside the ``Literal`` type ``choices``: the check
    for code that builds options without the command line, which refuses such values itself.

    >>> check_choice("paper", typing.Literal["paper", "default"], "options.grader")
    >>> check_choice("strict", typing.Literal["paper", "default"], "options.grader")
    Traceback (most recent call last):
    w2sr.records.jsonl.InputError: field 'options.grader': must be one of ['paper', 'default'], got 'strict'
    """
    allowed = typing.get_args(choices)
    if value not in allowed:
        raise InputError(f"must be one of {list(allowed)}, got {value!r}", field=field)


def check_range(
    value: float | None,
    field: str,
    low: float,
    high: float = float("inf"),
    *,
    open_low: bool = False,
    open_high: bool = True,
) -> None:
    """Refuse (``InputError`` naming ``field``) a number outside ``[low, high)`` (``open_low``: ``(low, ...``;
    ``open_high`` False: ``..., high]``); None passes (an option left unset).

    >>> check_range(0.1, "model.scheduler.warmup_ratio", 0, 1)
    >>> check_range(1.0, "model.scheduler.warmup_ratio", 0, 1)
    Traceback (most recent call last):
    w2sr.records.jsonl.InputError: field 'model.scheduler.warmup_ratio': must be in [0, 1), got 1.0
    """
    if value is None:
        return
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    if not (above and below):
        interval = ("(" if open_low else "[") + f"{low:g}, " + (f"{high:g}" if high != float("inf") else "inf")
        interval += ")" if open_high else "]"
        raise InputError(f"must be in {interval}, got {value!r}", field=field)


def as_list(value: list[str] | str | None) -> list[str]:
    """``[a,b]``, ``"a,b"`` or ``"a"`` (as an option gives them) -> a list of names; None -> ``[]``.

    >>> as_list(["math500,aime24", " gsm8k "])
    ['math500', 'aime24', 'gsm8k']
    >>> as_list(None)
    []
    """
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def args_section(cls: type) -> str:
    """A Google-style ``Args:`` section made of the field docstrings of the dataclass ``cls``.

    >>> from w2sr.records.problems import FieldMap
    >>> print(args_section(FieldMap))  # doctest: +NORMALIZE_WHITESPACE
    Args:
        problem: the field that holds the problem text.
        answer: the field that holds the gold answer.
        id: the field that holds each problem's id (null: a stable id is made from the source, position and text).
    """
    docs = field_docs(cls)
    lines = ["Args:"]
    for item in dataclasses.fields(cls):
        first, *rest = docs.get(item.name, "").splitlines() or [""]
        lines.append(f"    {item.name}: {first}".rstrip())
        lines += [f"        {line}".rstrip() for line in rest]
    return "\n".join(lines)


def document_fields(cls: type[T]) -> type[T]:
    """Class decorator (above ``@dataclass``): the class docstring gains the ``Args:`` section of
    :func:`args_section`, so ``--help`` shows each field's docstring."""
    cls.__doc__ = inspect.cleandoc(cls.__doc__ or "") + "\n\n" + args_section(cls)
    return cls


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string right under the field), by name, from the class and its dataclass bases.

    >>> from w2sr.records.problems import FieldMap
    >>> field_docs(FieldMap)["answer"]
    'the field that holds the gold answer.'
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # defined in a REPL or generated: no source to read
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs
