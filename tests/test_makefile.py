"""Every Debian tool a test or a chapter calls is installed by a prerequisite of the make target that runs it.

A fresh machine has no Graphviz, Chromium or MathJax. `make test` once passed only where an earlier
`make book` had installed Graphviz: the `unit` target did not depend on `graphviz`. These tests read the
Makefile's dependency graph and the sources that call each tool, so a missing install step fails here, on any
machine, instead of on a newcomer's.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# tool -> (the make target that installs it, what in a source file shows that the file calls it)
TOOLS = {
    "dot": ("graphviz", re.compile(r"```\{graphviz\}|shutil\.which\(\"dot\"\)")),
    "chromium": ("chromium", re.compile(r"chromium", re.I)),
    "mathjax": ("mathjax", re.compile(r"mathjax", re.I)),
}
# building the site draws every diagram and copies the local MathJax: a file that builds it needs both
BUILDS_THE_SITE = re.compile(r"jupyter-book")


def rules() -> dict[str, tuple[list[str], str]]:
    """target -> (prerequisites, recipe text) of every explicit rule in the Makefile."""
    out: dict[str, tuple[list[str], str]] = {}
    target = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and target:
            prereqs, recipe = out[target]
            out[target] = (prereqs, recipe + line.strip() + "\n")
            continue
        m = re.match(r"^([A-Za-z0-9_.$()/-]+)\s*:(?![=:])\s*(.*)$", line)
        target = m.group(1) if m and not line.startswith(".") else None
        if target:
            out[target] = (m.group(2).split(), "")
    return out


def closure(target: str, graph) -> set[str]:
    seen, todo = set(), [target]
    while todo:
        t = todo.pop()
        if t in seen or t not in graph:
            continue
        seen.add(t)
        todo.extend(graph[t][0])
    return seen


GRAPH = rules()


def test_the_makefile_parses_into_the_known_targets():
    for t in ("book", "test", "unit", "notebooks", "graphviz", "chromium", "mathjax", "install"):
        assert t in GRAPH, t
    assert "apt-get install" in GRAPH["graphviz"][1] and "graphviz" in GRAPH["graphviz"][1]
    assert "apt-get install" in GRAPH["chromium"][1] and "chromium" in GRAPH["chromium"][1]
    assert "libjs-mathjax" in GRAPH["mathjax"][1]


def needs(files: list[Path]) -> set[str]:
    """The tools that any of ``files`` calls, by the patterns above."""
    text = "\n".join(f.read_text(errors="replace") for f in files)
    used = {tool for tool, (_, pattern) in TOOLS.items() if pattern.search(text)}
    return used | ({"dot", "mathjax"} if BUILDS_THE_SITE.search(text) else set())


def test_the_unit_tests_tools_are_prerequisites_of_unit_and_test():
    tests = sorted((ROOT / "tests").glob("test_*.py")) + [ROOT / "tests" / "conftest.py"]
    used = needs([t for t in tests if t.name != Path(__file__).name])
    assert {"dot", "chromium"} <= used  # the site test builds the book and opens it in a browser
    for target in ("unit", "test"):
        missing = [TOOLS[t][0] for t in used if TOOLS[t][0] not in closure(target, GRAPH)]
        assert not missing, f"`make {target}` runs tests that call {missing} but does not install them"


def test_the_chapters_tools_are_prerequisites_of_notebooks_and_book():
    notebooks = sorted((ROOT / "chapters").glob("*.ipynb"))
    pages = sorted((ROOT / "book").glob("*.md"))
    executed = needs(notebooks) - {"dot", "mathjax"}  # nbval executes cells; diagrams are drawn by the build
    assert "dot" in needs(notebooks + pages)  # the concept diagrams
    for target, tools in (("notebooks", executed), ("book", needs(notebooks + pages) | {"dot", "mathjax"})):
        missing = [TOOLS[t][0] for t in tools if TOOLS[t][0] not in closure(target, GRAPH)]
        assert not missing, f"`make {target}` needs {missing} installed first"


@pytest.mark.parametrize("target", ["book", "test"])
def test_the_readme_commands_install_everything_they_use(target):
    assert "install" in closure(target, GRAPH) and "data" in closure(target, GRAPH)


def test_ci_removes_the_debian_packages_so_that_make_test_must_install_them():
    ci = (ROOT / ".ci" / "run").read_text()
    removal = re.search(r"(?m)^\s*.*apt-get remove.*$", ci)
    run_tests = re.search(r"(?m)^make test$", ci)
    assert removal and run_tests and removal.start() < run_tests.start()
    listed = re.search(r"(?m)^for pkg in (.*); do$", ci)
    assert listed and set(listed.group(1).split()) >= {"graphviz", "chromium", "libjs-mathjax"}
