"""The docs run as written: every ``w2sr ...`` command line in a fenced code block of README.md and docs/*.md parses
with the real ``w2sr`` parser (option names, types and ``Literal`` choices checked; no stage runs), every relative
link in them points at a file that exists, and every stage page opens with the commands it documents.

The parser is built once, by ``w2sr.cli.main`` itself with LightningCLI's ``parse_arguments`` intercepted, so the
options checked are exactly the ones the command accepts; each doc line is then ``parse_args``-ed by its stage's parser
(under 0.1 CPU-seconds a line).
Abbreviations are refused here (argparse would accept ``--problem`` for ``--problems``): docs spell options in full.
Shell around a command is understood just enough: continuation lines are joined, comments dropped, ``VAR=value``
lines and ``for VAR in ...`` loops of the same block expanded, a command found after ``srun``, ``torchrun ... -m
w2sr.cli`` or ``CUDA_VISIBLE_DEVICES=...``; the few command substitutions a doc uses are in ``PLACEHOLDERS``.

Run: ``pytest tests/layout/test_docs_commands.py``.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
STAGE_PAGES = [
    "generate",
    "verify",
    "decontaminate",
    "fit",
    "rl",
    "evaluate",
    "report",
    "export",
    "multi-gpu",
    "measurements",
]
# Shell command substitutions used in docs, and what they stand for when the line is parsed.
PLACEHOLDERS = {
    "$(ls runs/paper/traces.?.jsonl | paste -sd, -)": "runs/paper/traces.0.jsonl,runs/paper/traces.1.jsonl",
}
OPERATORS = {";", "&", "&&", "|", "||", "(", ")", ";;", "&;", ");", "|&"}
FENCE = re.compile(r"^\s*(```|~~~)")
ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=")
LOOP = re.compile(r"^\s*for\s+([A-Za-z_]\w*)\s+in\s")
VARIABLE = re.compile(r"\$\{?([A-Za-z_]\w*)\}?")


@dataclass(frozen=True)
class DocCommand:
    """One ``w2sr`` invocation found in a doc."""

    where: str
    """``file:line`` of the command's first line."""
    text: str
    """The logical line as written (continuations joined)."""
    argv: tuple[str, ...]
    """What follows ``w2sr`` (the subcommand and its options), shell variables expanded."""


def fenced_blocks(text: str) -> Iterator[list[tuple[int, str]]]:
    """Each fenced code block's lines with their 1-based line numbers."""
    block: list[tuple[int, str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                yield block
                block = None
        elif block is not None:
            block.append((number, line))


def logical_lines(block: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Lines ending in a backslash joined with the next, as the shell reads them."""
    start, parts = 0, []
    for number, line in block:
        if not parts:
            start = number
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        yield start, " ".join(part.strip() for part in parts)
        parts = []
    if parts:
        yield start, " ".join(part.strip() for part in parts)


def shell_words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def commands_in(path: Path) -> Iterator[DocCommand]:
    """Every ``w2sr`` command in a Markdown file's fenced code blocks."""
    name = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    for block in fenced_blocks(path.read_text()):
        variables: dict[str, str] = {}
        for number, line in logical_lines(block):
            where = f"{name}:{number}"
            loop = LOOP.match(line)
            if loop:
                variables[loop.group(1)] = "0"
            for expression, value in PLACEHOLDERS.items():
                line = line.replace(expression, value)
            expanded = VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), line)
            if not re.search(r"(^|\s)w2sr(\s|$)|-m\s+w2sr\.cli(\s|$)", expanded.split("#")[0]):
                words = shell_words(expanded) if "=" in expanded else []
                if len(words) == 1 and ASSIGNMENT.match(words[0]):
                    variable, _, value = words[0].partition("=")
                    variables[variable] = value
                continue
            words = shell_words(expanded)
            segment: list[str] = []
            for word in [*words, ";"]:
                if word not in OPERATORS:
                    segment.append(word)
                    continue
                argv = after_w2sr(segment)
                if argv is not None:
                    yield DocCommand(where, line, tuple(argv))
                segment = []


def after_w2sr(words: list[str]) -> list[str] | None:
    """The arguments of ``w2sr`` (or ``python -m w2sr.cli``) in one shell command, else None."""
    for i, word in enumerate(words):
        if word == "w2sr":
            return words[i + 1 :]
        if word == "-m" and i + 1 < len(words) and words[i + 1] == "w2sr.cli":
            return words[i + 2 :]
    return None


@pytest.fixture(scope="module")
def parse() -> Iterator[Callable[[tuple[str, ...]], str | None]]:
    """``parse(argv)`` -> None when the real ``w2sr`` parser accepts ``argv``, else its error line."""
    import w2sr.cli as cli

    class Built(Exception):
        pass

    built = {}

    def keep_parser(self: object, parser: object, args: object) -> None:
        built["parser"] = parser
        raise Built

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.W2SRCLI, "parse_arguments", keep_parser)
        patch.chdir(REPO)  # doc commands name repo files (--config lightning_configs/...) relative to the root
        with contextlib.suppress(Built):
            cli.main(args=[])
        parser = built["parser"]
        stages = parser._subcommands_action._name_parser_map  # each stage's own parser: 4x faster than the root's
        for each in [parser, *stages.values()]:
            patch.setattr(each, "allow_abbrev", False)

        def run(argv: tuple[str, ...]) -> str | None:
            if any("$" in word for word in argv):
                return "unexpanded shell syntax: add it to PLACEHOLDERS in this test, or write the value"
            if argv and argv[0] not in stages and not argv[0].startswith("-"):  # stages as the parser has them
                return f"unknown w2sr command {argv[0]!r}"
            args = cli.gather_lists(list(argv))
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    if args and args[0] in stages:
                        stages[args[0]].parse_args(args[1:])
                    else:
                        parser.parse_args(args)
            except SystemExit as stop:
                if stop.code not in (0, None):  # --help and --print_config exit 0
                    lines = [line for line in err.getvalue().splitlines() if line.strip()]
                    return " / ".join(lines[-3:]) or f"exit {stop.code}"
            return None

        yield run


def test_every_command_line_in_the_docs_parses(parse: Callable[[tuple[str, ...]], str | None]) -> None:
    commands = [command for path in DOC_FILES for command in commands_in(path)]
    failures = [f"{c.where}: w2sr {' '.join(c.argv)}\n    {err}" for c in commands if (err := parse(c.argv))]
    assert not failures, f"{len(failures)} doc command(s) the w2sr parser refuses:\n" + "\n".join(failures)
    assert len(commands) >= 30, f"only {len(commands)} w2sr commands found: is the extraction broken?"
    used = {c.argv[0] for c in commands if c.argv}
    assert {"generate", "verify", "fit", "evaluate", "report", "export"} <= used, used


def test_a_wrong_option_in_a_doc_is_caught(tmp_path: Path, parse: Callable[[tuple[str, ...]], str | None]) -> None:
    """The check can fail: a misspelt option, an abbreviation, a bad choice, a continuation line, a stage."""
    doc = tmp_path / "wrong.md"
    doc.write_text(
        "Text with w2sr fit --not_checked outside a fence.\n\n```bash\n"
        "w2sr fit --config lightning_configs/quickstart/fit.yaml --trainer.max_step 5   # singular\n"
        "w2sr generate --config lightning_configs/quickstart/generate.yaml --problem x.jsonl   # abbreviated\n"
        "w2sr export --adapter A --output B --base_quantization nf8\n"
        'EVAL="--limit 8 --sampling.temprature 0.6"\n'
        "w2sr evaluate --model.model_name_or_path M $EVAL --output_dir D\n"
        "w2sr report --runs a b \\\n    --base a --output_dir R --min_gaps 0.1\n"
        "srun w2sr fit --config lightning_configs/quickstart/fit.yaml --model.lora.rank 8\n"
        "w2sr evalute --output_dir D   # no such stage\n"
        "w2sr fit --config lightning_configs/quickstart/fit.yaml --trainer.max_steps 5   # right\n"
        "```\n"
    )
    commands = list(commands_in(doc))
    assert [c.argv[0] for c in commands] == ["fit", "generate", "export", "evaluate", "report", "fit", "evalute", "fit"]
    errors = [parse(c.argv) for c in commands]
    assert all(errors[:-1]), list(zip(commands, errors))
    assert errors[-1] is None
    assert "max_step" in errors[0] and "problem" in errors[1] and "nf8" in errors[2]
    assert "temprature" in errors[3] and "min_gaps" in errors[4] and "rank" in errors[5] and "evalute" in errors[6]


LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_relative_link_in_the_docs_resolves() -> None:
    failures = []
    for path in DOC_FILES:
        for target in LINK.findall(path.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                failures.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
                failures.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("page", STAGE_PAGES)
def test_each_stage_page_opens_with_its_commands(page: str) -> None:
    """A reader sees the commands first: a fenced block with a ``w2sr`` or ``make`` line before the first section."""
    text = (REPO / "docs" / f"{page}.md").read_text()
    head = text.split("\n## ", 1)[0]
    blocks = ["\n".join(line for _, line in block) for block in fenced_blocks(head)]
    assert any(re.search(r"(^|\s)(w2sr|make|python)\s", block) for block in blocks), f"docs/{page}.md"
