"""The package's layers: imports run one way, and no module imports itself back through others.

Layers, lowest first: utilities (atomic, plots, precision, progress, profiles) → data → models → inference → training →
finetune → evaluation → rl → serving → cli. A module may import its own layer and the layers below it, never one
above; and the import graph has no cycle. A function-level import of the package's own modules is allowed
only for a module that needs an optional extra (``OPTIONAL``), so that the rest works without it.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "llm_companion"
LAYERS = ["", "data", "models", "inference", "training", "finetune", "evaluation", "rl", "serving", "cli"]
UTILITIES = {"atomic", "plots", "precision", "progress", "profiles"}
OPTIONAL = {"llm_companion.serving.app": "fastapi (the `serve` extra)"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}


def imports(path: Path, name: str, *, top_level_only: bool) -> set[str]:
    """Package modules that ``path`` imports (at module level, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod.startswith("llm_companion"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("llm_companion"))
    return found & set(modules()) - {name}


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


GRAPH = {name: imports(path, name, top_level_only=False) for name, path in modules().items()}


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n != "llm_companion"))
def test_imports_run_down_the_layers(name):
    if layer(name) not in LAYERS:
        pytest.fail(f"{name} is in no layer; add its subpackage to LAYERS")
    if layer(name) == "" and name.split(".")[1] not in UTILITIES:
        pytest.fail(f"{name} is a top-level module but not a utility; add it to UTILITIES or move it into a layer")
    mine = LAYERS.index(layer(name))
    up = sorted(t for t in GRAPH[name] if t != "llm_companion" and LAYERS.index(layer(t)) > mine
                and not t.startswith(name + "."))
    assert not up, f"{name} (layer {layer(name) or 'utilities'!r}) imports from a higher layer: {up}"


def test_no_import_cycles():
    graph = {n: {t for t in ts if t != "llm_companion"} for n, ts in GRAPH.items() if n != "llm_companion"}
    graph = {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in graph.items()}  # a package's own init
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for t in sorted(graph.get(n, ())):
            visit(t)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_package_modules_are_imported_at_module_level():
    late = {}
    for name, path in modules().items():
        inner = imports(path, name, top_level_only=False) - imports(path, name, top_level_only=True) - set(OPTIONAL)
        if inner:
            late[name] = sorted(inner)
    assert not late, f"function-level imports of the package's own modules (import them at the top): {late}"


def test_ruff_lints_every_module_of_the_package():
    # ruff matches an unanchored exclude ("data") at any depth: llm_companion/data/ once went unlinted
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    run = subprocess.run([ruff, "check", "--show-files", str(PKG)], capture_output=True, text=True,
                         cwd=PKG.parent, timeout=120)
    listed = {Path(line.strip()).resolve() for line in run.stdout.splitlines() if line.strip().endswith(".py")}
    assert set(modules().values()) <= listed, sorted(set(modules().values()) - listed)
