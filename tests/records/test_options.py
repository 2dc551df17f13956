"""Option groups (w2sr/records/options.py) and the trace rules that live in one place (w2sr/records/traces.py): the
dict-or-dataclass coercion, comma lists, field docstrings as ``--help`` text, the W2SR / -P / -N rule, the trace key;
the docstring examples of both modules run here so they cannot rot.

Run: ``pytest tests/records/test_options.py``.
"""

from __future__ import annotations

import doctest
from dataclasses import dataclass

import pytest

from w2sr.records import options, traces
from w2sr.records.options import args_section, as_dict, as_options, document_fields, field_docs
from w2sr.records.problems import FieldMap
from w2sr.records.traces import VARIANT_NAMES, in_variant


@pytest.mark.parametrize("module", [options, traces])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_as_options_and_as_dict_round_trip():
    fields = FieldMap(problem="question", id=None)
    assert as_options(fields, FieldMap) is fields
    assert as_options(as_dict(fields), FieldMap) == fields
    with pytest.raises(TypeError):
        as_dict(["problem"])


def test_document_fields_puts_each_field_docstring_in_the_class_docstring():
    @document_fields
    @dataclass
    class Options:
        """Some options."""

        rate: float = 0.1
        """the rate, a fraction
        of one."""
        name: str = "x"

    assert field_docs(Options) == {"rate": "the rate, a fraction\nof one."}
    assert Options.__doc__ == "Some options.\n\n" + args_section(Options)
    assert args_section(Options).splitlines() == [
        "Args:",
        "    rate: the rate, a fraction",
        "        of one.",
        "    name:",
    ]


def test_the_variant_rule():
    table = {(v, c): in_variant(c, v) for v in VARIANT_NAMES for c in (True, False, None)}
    assert [k for k, kept in table.items() if kept] == [
        ("all", True),
        ("all", False),
        ("all", None),
        ("correct", True),
        ("incorrect", False),
    ]
    with pytest.raises(ValueError, match="unknown variant"):
        in_variant(True, "wrong")  # type: ignore[arg-type]
