"""The import rule of docs/architecture.md: nothing imports a layer above it, and the planning layers
import without torch (nor matplotlib or pandas, which load only inside the functions that draw or
tabulate)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "melplan"

# rank of each layer: a module may import its own layer and layers of a lower rank, never a higher one.
RANK = {
    "core": 0,
    "planner": 1,
    "runtime": 2,
    "sim": 3,
    "deploy": 3,
    "train": 3,
    "pareto": 4,  # pareto.search trains candidates (lazily) with melplan.train
    "serve": 5,
    "commands": 6,
    "entry": 7,  # melplan/__init__.py, __main__.py, cli.py
}
TORCH_FREE = ("core", "planner", "runtime", "sim", "pareto", "deploy")


def _layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else "entry"


def _target_layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK and parts[1] != "entry" else "entry"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported melplan module) for every import in the file, lazy ones inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("melplan"):
            names = [node.module] if node.module != "melplan" else [f"melplan.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "<relative>"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("melplan")]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "catalog" not in p.relative_to(PKG).parts[:1])


def test_every_module_belongs_to_a_known_layer():
    unknown = sorted({_layer(p) for p in _modules()} - set(RANK))
    assert not unknown, f"new top-level package(s) {unknown}: give them a rank in tests/test_layers.py and docs"


def test_no_module_imports_a_layer_above_it():
    violations = []
    for path in _modules():
        src = _layer(path)
        for line, mod in _imports(path):
            if mod == "<relative>":
                violations.append(f"{path.relative_to(PKG.parent)}:{line} relative import (use melplan.<layer>...)")
                continue
            dst = _target_layer(mod)
            if dst != src and RANK[dst] >= RANK[src]:
                violations.append(f"{path.relative_to(PKG.parent)}:{line} {src} (rank {RANK[src]}) imports {mod}")
    assert not violations, "upward imports:\n" + "\n".join(violations)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule above can fail: a planner module importing the runtime is caught (oracle: hand-written)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from melplan.runtime.selector import RuntimeSelector\n")
    assert _imports(bad) == [(2, "melplan.runtime.selector")]
    assert RANK["runtime"] > RANK["planner"]


@pytest.mark.parametrize("layer", TORCH_FREE)
def test_planning_layers_import_without_torch(layer):
    mods = sorted(
        ".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in (PKG / layer).rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'matplotlib', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{layer} pulls in {out.stdout.strip()} at import time"
