"""The house rules of ``w2sr/`` (docs/ARCHITECTURE.md): stage packages whose arrows point down, no import cycle
(function-level imports included), torch-free leaves, small modules that say what they are for.

Run: ``pytest tests/layout``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "w2sr"
# what each part may import (besides itself); cli.py knows every package; the short re-export modules their target
ALLOWED = {
    "records": set(),
    "runtime": {"records"},
    "verification": {"records"},
    "toy": {"records"},
    "generation": {"records", "toy"},
    "training": {"records", "runtime", "generation", "verification"},
    "evaluation": {"records", "runtime", "generation", "verification"},
    "rl": {"records", "runtime", "generation", "verification", "training"},
    "callbacks": {"training"},
    "strategies": {"training"},
    "report": {"evaluation"},
    "cli": {"records", "runtime", "generation", "verification", "training", "evaluation", "rl"},
}
LEAVES = ("w2sr.records", "w2sr.verification", "w2sr.evaluation.metrics")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """Every w2sr module ``path`` imports, at module level or inside functions (``from w2sr.x import y`` counts
    ``w2sr.x.y`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("w2sr"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("w2sr") and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {name for name in found if name in known and name != "w2sr"}


def part(name: str) -> str:
    return name.split(".")[1] if name.count(".") else "w2sr"


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imported(path, known) - {name} for name, path in modules().items()}


def test_arrows_point_down() -> None:
    wrong = []
    for name, targets in graph().items():
        if name == "w2sr":
            continue
        allowed = ALLOWED[part(name)] | {part(name)}
        wrong += [f"{name} -> {t}" for t in sorted(targets) if part(t) not in allowed]
    assert not wrong, "imports against the layering of docs/ARCHITECTURE.md:\n" + "\n".join(wrong)


def test_no_import_cycle_anywhere() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from w2sr.training import export\n    from w2sr.training.loading import x\n")
    assert imported(source, {"w2sr.training.export", "w2sr.training.loading"}) == {
        "w2sr.training.export",
        "w2sr.training.loading",
    }


def test_leaves_import_neither_torch_nor_lightning() -> None:
    names = [n for n in modules() if n.startswith(LEAVES)]
    assert "w2sr.verification.grade" in names and "w2sr.records.jsonl" in names
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n    importlib.import_module(name)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning',"
        " 'transformers'))\nprint(json.dumps(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_modules_are_small_and_say_what_they_are_for() -> None:
    problems = []
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            problems.append(f"{name}: {lines} lines (at most {MAX_LINES})")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if not doc.strip():
            problems.append(f"{name}: no module docstring")
        elif not path.name == "__init__.py" and not any(k in doc for k in ("w2sr ", "pytest", "python -m")):
            problems.append(f"{name}: the docstring names no command that exercises it")
    assert not problems, "\n".join(problems)


def test_tests_mirror_the_packages() -> None:
    folders = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= folders
    assert not list((REPO / "tests").glob("test_*.py")), "tests live in the folder of the package they test"


def test_test_file_names_are_unique() -> None:
    # tests/ has no __init__.py: pytest imports each test file by its base name, so two test_data.py in two folders
    # stop a full run at collection ("import file mismatch") while either folder alone passes
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(REPO)} and {path.relative_to(REPO)}")
        seen.setdefault(path.name, path)
    assert not clashes, "test files share a base name: " + "; ".join(clashes)
