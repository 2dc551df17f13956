"""Readability figures of the ``w2sr/`` package (issue 24): longest function, ``Any`` per 1,000 lines, share of lines
over 100 characters, README lines; for the working tree or any git revision.

Run: ``python benchmarks/code_figures.py [--rev REV ...]`` (writes ``benchmarks/results/code_figures.json``).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import subprocess
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _files(rev: str | None) -> dict[str, str]:
    """``{path: text}`` of ``w2sr/**/*.py`` and README.md at ``rev`` (None: the working tree)."""
    if rev is None:
        paths = sorted(str(p.relative_to(REPO)) for p in (REPO / "w2sr").rglob("*.py"))
        return {p: (REPO / p).read_text() for p in [*paths, "README.md"]}
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, "w2sr"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    show = lambda p: subprocess.run(["git", "show", f"{rev}:{p}"], cwd=REPO, capture_output=True, text=True).stdout  # noqa: E731
    return {p: show(p) for p in [*[n for n in names if n.endswith(".py")], "README.md"]}


def _any_count(text: str) -> int:
    """``Any`` as a name in code (not in strings or comments)."""
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return sum(1 for tok in tokens if tok.type == tokenize.NAME and tok.string == "Any")


def figures(rev: str | None) -> dict[str, object]:
    files = _files(rev)
    code = {p: t for p, t in files.items() if p.endswith(".py")}
    lines = [line for text in code.values() for line in text.splitlines()]
    longest = ("", 0)
    for path, text in code.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > longest[1]:
                    longest = (f"{path}:{node.lineno} {node.name}", size)
    anys = sum(_any_count(t) for t in code.values())
    return {
        "rev": rev or "working tree",
        "python_lines": len(lines),
        "longest_function": longest[0],
        "longest_function_lines": longest[1],
        "any_per_1000_lines": round(1000 * anys / len(lines), 1),
        "lines_over_100_chars_pct": round(100 * sum(len(line) > 100 for line in lines) / len(lines), 1),
        "readme_lines": len(files["README.md"].splitlines()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rev", nargs="*", default=[], help="git revisions to measure besides the working tree")
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/code_figures.json"))
    args = parser.parse_args()
    rows = [figures(rev) for rev in args.rev] + [figures(None)]
    Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
