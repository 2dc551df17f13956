"""Each stage's options declared once (w2sr/runtime/command_line.py): the Trainer methods LightningCLI reads are
generated from the stages' request dataclasses, with each field's docstring as its help, and ``python -m w2sr.report``
reads the same options as ``w2sr report``.

Run: ``pytest tests/runtime/test_command_line.py``.
"""

from __future__ import annotations

import dataclasses
import doctest
import inspect

import pytest
from jsonargparse import ArgumentParser
from jsonargparse._actions import _ActionConfigLoad

from w2sr.cli import W2SRTrainer
from w2sr.evaluation.report_request import ReportRequest
from w2sr.evaluation.stage import EvaluateRequest
from w2sr.generation.stage import GenerateRequest
from w2sr.runtime import command_line
from w2sr.runtime.command_line import gather_lists, parse_request, request_parser, stage_method
from w2sr.training.export import ExportRequest
from w2sr.verification.stage import VerifyRequest

STAGES = {
    "generate": GenerateRequest,
    "verify": VerifyRequest,
    "evaluate": EvaluateRequest,
    "report": ReportRequest,
    "export": ExportRequest,
}


def stage_options(stage: str) -> dict[str, object]:
    """``{dest: action}`` of the options ``w2sr <stage>`` adds for the stage (what LightningCLI adds, minus the
    trainer/model/data groups)."""
    parser = ArgumentParser()
    parser.add_method_arguments(W2SRTrainer, stage, skip={"model", "datamodule"})
    return {a.dest: a for a in parser._actions if a.dest != "help"}


@pytest.mark.parametrize("stage, request_type", STAGES.items())
def test_each_stage_method_is_its_request(stage, request_type):
    """The options are the request's fields, in order, with its types and defaults; nothing is declared twice."""
    method = getattr(W2SRTrainer, stage)
    assert method.request_type is request_type
    fields = {f.name: f for f in dataclasses.fields(request_type)}
    params = list(inspect.signature(method).parameters.values())
    assert [p.name for p in params] == ["self", "model", "datamodule", *fields]
    options = stage_options(stage)
    assert [d for d in options if "." not in d] == list(fields)
    for name, item in fields.items():
        if item.default is not dataclasses.MISSING:
            assert options[name].default == item.default, name
        elif item.default_factory is dataclasses.MISSING:
            assert options[name].required, name


def undocumented(actions: dict[str, object]) -> list[str]:
    return [d for d, a in actions.items() if not isinstance(a, _ActionConfigLoad) and not (a.help or "").strip()]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_option_has_its_field_docstring_as_help(stage):
    """Each request field and each field of its option groups (``--sampling.n``, ``--options.grader``, ...)."""
    missing = undocumented(stage_options(stage))
    assert not missing, f"w2sr {stage} options without help: {missing}"


def test_every_model_and_data_option_has_help():
    """``w2sr fit``'s ``model.*`` and ``data.*`` groups, the option dataclasses inside them included."""
    from w2sr.training.datamodule import TraceDataModule
    from w2sr.training.module import StudentModule

    parser = ArgumentParser()
    parser.add_class_arguments(StudentModule, "model")
    parser.add_class_arguments(TraceDataModule, "data")
    actions = {a.dest: a for a in parser._actions if a.dest != "help" and not a.dest.endswith(".help")}
    assert {"model.lora.r", "model.scheduler.warmup_ratio", "data.val_fraction"} <= set(actions)
    assert not undocumented(actions), undocumented(actions)


def test_the_method_builds_the_request_and_passes_it_down():
    seen = []

    @dataclasses.dataclass(kw_only=True)
    class Request:
        name: str
        """a name."""
        count: int = 2
        """how many."""

    class Host:
        @stage_method(Request)
        def stage(self, model, request):
            """Do it."""
            seen.append((model, request))

    Host().stage(model="m", datamodule=None, name="x")
    assert seen == [("m", Request(name="x", count=2))]
    assert inspect.getdoc(Host.stage).splitlines() == [
        "Do it.",
        "",
        "Args:",
        "    name: a name.",
        "    count: how many.",
    ]


def test_python_m_report_reads_the_same_options_as_w2sr_report():
    alias = request_parser(ReportRequest, "python -m w2sr.report", "")
    alias_options = {a.dest: a for a in alias._actions if a.dest not in ("help", "config", "print_config")}
    cli_options = stage_options("report")
    assert list(alias_options) == list(cli_options)
    for dest, action in cli_options.items():
        assert (alias_options[dest].help, alias_options[dest].default) == (action.help, action.default), dest
    assert "min_gap" in alias_options


def test_parse_request_reads_lists_in_every_syntax(tmp_path):
    def runs(*argv: str) -> list[str]:
        return parse_request(ReportRequest, [*argv, "--output_dir", str(tmp_path)], "p", "").runs

    assert runs("--runs", "a", "b") == runs("--runs", "[a,b]") == runs("--runs", "a,b") == ["a", "b"]
    request = parse_request(ReportRequest, ["--runs", "a", "--output_dir", "o", "--min_gap", "0.2"], "p", "")
    assert (request.runs, request.fit_runs, request.min_gap) == (["a"], [], 0.2)


def test_gather_lists_leaves_other_options_alone():
    argv = ["evaluate", "--predictions", "a.jsonl", "b.jsonl", "--output_dir", "o", "--runs", "x"]
    assert gather_lists(argv) == ["evaluate", "--predictions", "[a.jsonl,b.jsonl]", "--output_dir", "o", "--runs", "x"]


def test_doctests():
    assert doctest.testmod(command_line).failed == 0


def test_a_command_s_start_imports_no_model_code(tmp_path):
    """jsonargparse runs the ``if TYPE_CHECKING:`` blocks of the modules whose option classes it reads: a heavy
    import there (peft: ~1.3 CPU-s, transformers' modeling code) would be paid by every ``w2sr`` start."""
    import json
    import subprocess
    import sys

    bad = tmp_path / "traces.jsonl"
    bad.write_text('{"id": "1"}\n')
    code = (
        "import json, sys\nfrom w2sr.cli import main\n"
        f"try:\n    main(['verify', '--input', {str(bad)!r}, '--output', {str(tmp_path / 'o.jsonl')!r}])\n"
        "except SystemExit as stop:\n    assert stop.code == 2, stop.code\n"
        "print(json.dumps(sorted(m for m in ('peft', 'transformers.modeling_utils') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
