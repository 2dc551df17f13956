"""Names users type outlive any move: every ``class_path`` in lightning_configs/, the README, docs/ and examples/
resolves, the short re-export modules are the real classes, and the module commands still run.

Run: ``pytest tests/layout/test_public_names.py``.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

CLASS_PATH = re.compile(r"class_path:\s*([A-Za-z_][\w.]*)")


def class_paths() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    examples = REPO / "examples"
    files = [
        *(REPO / "lightning_configs").rglob("*.yaml"),
        REPO / "README.md",
        *(REPO / "docs").rglob("*.md"),
        *examples.rglob("*.md"),
        *examples.rglob("*.yaml"),
        *examples.rglob("*.py"),
    ]
    for path in files:
        for match in CLASS_PATH.finditer(path.read_text()):
            found.setdefault(match.group(1), []).append(str(path.relative_to(REPO)))
    return found


def resolve(dotted: str) -> object:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_class_path_resolves() -> None:
    paths = class_paths()
    ours = {p for p in paths if p.startswith("w2sr.")}
    assert {
        "w2sr.callbacks.ReasoningAccuracy",
        "w2sr.callbacks.Throughput",
        "w2sr.strategies.W2SRFSDPStrategy",
        "w2sr.strategies.W2SRDeepSpeedStrategy",
    } <= ours
    failures = []
    for dotted, where in sorted(paths.items()):
        try:
            resolve(dotted)
        except (ImportError, AttributeError) as err:
            failures.append(f"{dotted} ({', '.join(sorted(set(where)))}): {err}")
    assert not failures, "\n".join(failures)


def test_every_yaml_parses() -> None:
    for path in (REPO / "lightning_configs").rglob("*.yaml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


@pytest.mark.parametrize(
    "public, real",
    [
        ("w2sr.callbacks.ReasoningAccuracy", "w2sr.training.callbacks.ReasoningAccuracy"),
        ("w2sr.callbacks.Throughput", "w2sr.training.callbacks.Throughput"),
        ("w2sr.callbacks.TraceScoreWriter", "w2sr.training.callbacks.TraceScoreWriter"),
        ("w2sr.strategies.W2SRFSDPStrategy", "w2sr.training.strategies.W2SRFSDPStrategy"),
        ("w2sr.strategies.W2SRDeepSpeedStrategy", "w2sr.training.strategies.W2SRDeepSpeedStrategy"),
    ],
)
def test_short_paths_are_the_real_classes(public: str, real: str) -> None:
    assert resolve(public) is resolve(real)


@pytest.mark.parametrize("module", ["w2sr.report", "w2sr.toy", "w2sr.cli"])
def test_module_commands_still_run(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout.lower()
