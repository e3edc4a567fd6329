"""The chapters' prose and diagrams read the same on the site, in JupyterLab and on GitHub.

Numbers in the prose are ``{eval}`` inline expressions whose values ``make execute`` stores in the notebook
(tests/tools/execute_book.py); diagrams are Markdown images of SVGs drawn from ``chapters/figures/*.dot``
(tests/tools/figures.py). These tests hold the committed chapters to that, and check the two tools.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
sys.path.insert(0, str(ROOT / "tests" / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

import execute_book  # noqa: E402
import figures  # noqa: E402
from book_toc import toc_files  # noqa: E402
from stored_eval import expressions, plain_text, stored_values  # noqa: E402

CHAPTERS = [ROOT / f"{f}.ipynb" for f in toc_files(ROOT) if (ROOT / f"{f}.ipynb").is_file()]
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def markdown_cells(path: Path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


def test_the_toc_has_chapters_to_check():
    assert len(CHAPTERS) >= 12


# ------------------------------------------------------------------------------------------- the tools
def test_inline_expressions_are_found_in_order_and_strings_lose_their_quotes():
    md = 'Share {eval}`f"{x:.1%}"` and {eval}`name`; not `code` or {glue:text}`k`.'
    assert expressions(md) == ['f"{x:.1%}"', "name"]
    ok = {"status": "ok", "data": {"text/plain": "'12.3%'"}}
    assert plain_text(ok) == "12.3%"
    assert plain_text({"status": "ok", "data": {"text/plain": '"it\'s"'}}) == "it's"
    assert plain_text({"status": "ok", "data": {"text/plain": "0.25"}}) == "0.25"
    assert plain_text({"status": "error", "ename": "NameError", "evalue": "x"}) is None


def _tiny_notebook(path: Path, markdown_after_reassignment: str) -> Path:
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook(cells=[
        new_code_cell('x = 0.12345\nname = "it\'s"'),
        new_markdown_cell('Share {eval}`f"{x:.1%}"`, {eval}`name`, twice {eval}`x * 2`.'),
        new_code_cell("x = 1"),
        new_markdown_cell(markdown_after_reassignment),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_execute_stores_each_expression_as_it_stands_at_its_cell(tmp_path):
    path = _tiny_notebook(tmp_path / "t.ipynb", "Now {eval}`x`.")
    execute_book.execute(path, timeout=120, busy_mark=False)
    values = [(e, plain_text(r)) for e, r in stored_values(path)]
    assert values == [('f"{x:.1%}"', "12.3%"), ("name", "it's"), ("x * 2", "0.2469"), ("x", "1")]
    cells = markdown_cells(path)
    assert [e["expression"] for e in cells[1].metadata["user_expressions"]] == ["x"]  # jupyterlab-myst's format
    assert nbformat.read(path, as_version=4).metadata["llm_book_execution"]["busy"] is False


@pytest.mark.slow
def test_an_expression_that_raises_stops_execution_naming_the_cell(tmp_path):
    path = _tiny_notebook(tmp_path / "t.ipynb", "Missing {eval}`undefined_name + 1`.")
    with pytest.raises(execute_book.InlineExpressionError, match="markdown cell 3.*undefined_name.*NameError"):
        execute_book.execute(path, timeout=120, busy_mark=False)


def test_cores_in_use_sees_a_busy_core():
    import threading

    stop = time.monotonic() + 1.5
    spinner = threading.Thread(target=lambda: [None for _ in iter(lambda: time.monotonic() > stop, True)])
    spinner.start()
    try:
        busy = execute_book.cores_in_use(0.5)
    finally:
        spinner.join()
    assert 0.5 <= busy <= (os.cpu_count() or 1) + 0.05


def test_a_figure_records_its_source_and_a_changed_source_makes_it_stale(tmp_path):
    dot = tmp_path / "f.dot"
    dot.write_text("digraph { a -> b }\n")
    svg = dot.with_suffix(".svg")
    assert figures.stale(tmp_path) == [dot]                       # never drawn
    svg.write_text(f"<?xml?>\n<!-- source: f.dot sha256 {figures.source_sha256(dot)} -->\n<svg/>\n")
    assert figures.stale(tmp_path) == []
    dot.write_text("digraph { a -> c }\n")
    assert figures.stale(tmp_path) == [dot]


def test_drawing_a_figure_gives_an_svg_stamped_with_its_source(tmp_path):
    if shutil.which("dot") is None:
        pytest.fail("Graphviz's dot is not installed: `make graphviz` (a prerequisite of `make test`) installs it")
    dot = tmp_path / "g.dot"
    dot.write_text('digraph { node [shape=box]; "prompt" -> "answer" }\n')
    svg = figures.draw(dot)
    text = svg.read_text()
    assert text.startswith("<?xml") and "<svg" in text and ">prompt<" in text
    assert figures.stamp_of(svg) == figures.source_sha256(dot) and figures.stale(tmp_path) == []


# --------------------------------------------------------------------------------- the committed book
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_prose_uses_stored_inline_expressions_not_glue(path):
    text = path.read_text(encoding="utf-8")
    assert "{glue" not in text and "myst_nb import glue" not in text, \
        "numbers reach the prose as {eval}`expr` (see CONTRIBUTING.md), which JupyterLab renders too"
    for k, cell in enumerate(markdown_cells(path)):
        exprs = expressions(cell.source)
        stored = cell.metadata.get("user_expressions", [])
        assert [e["expression"] for e in stored] == exprs, \
            f"markdown cell {k}: the stored values do not match its {{eval}} expressions: run `make execute`"
        for e in stored:
            assert plain_text(e["result"]) is not None, f"markdown cell {k}: {e['expression']!r} failed"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_diagrams_are_images_of_committed_svgs(path):
    for k, cell in enumerate(markdown_cells(path)):
        assert "{graphviz}" not in cell.source, \
            f"markdown cell {k}: put the diagram in chapters/figures/NAME.dot and show ![...](figures/NAME.svg)"
        for src in IMAGE.findall(cell.source):
            if not src.startswith(("http://", "https://", "data:")):
                assert (path.parent / src).is_file(), f"markdown cell {k}: {src} does not exist"


def test_every_figure_is_drawn_from_its_current_source():
    dots = sorted(figures.FIGURES.glob("*.dot"))
    assert dots, "chapters/figures holds the diagrams' sources"
    assert figures.stale() == [], "run `make figures` and commit the SVGs"
    used = {Path(src).name for p in CHAPTERS for c in markdown_cells(p) for src in IMAGE.findall(c.source)}
    unused = sorted(d.with_suffix(".svg").name for d in dots if d.with_suffix(".svg").name not in used)
    assert unused == [], f"figures no chapter shows: {unused}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_committed_outputs_hold_no_widget(path):
    for k, cell in enumerate(nbformat.read(path, as_version=4).cells):
        for out in cell.get("outputs", []):
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), \
                f"cell {k} stores a widget, which a page shows frozen (set LLM_COMPANION_PROGRESS=plain)"


def test_every_code_cell_is_in_the_one_notebook_style():
    # chapters/ruff.toml: `ruff format` at 80 columns, so no cell mixes a formatter's splits with hand wrapping
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    run = subprocess.run([ruff, "format", "--check", "--diff", "chapters"], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, f"run `ruff format chapters`:\n{run.stdout[-3000:]}{run.stderr[-1000:]}"
    run = subprocess.run([ruff, "check", "--show-files", "chapters"], cwd=ROOT, capture_output=True, text=True)
    listed = {Path(line.strip()).name for line in run.stdout.splitlines()}
    assert {p.name for p in CHAPTERS} <= listed, "chapters/ruff.toml must lint every chapter"


# ------------------------------------------------------------------------------- checked outputs, any CPU
# A cell marked NBVAL_CHECK_OUTPUT must print the same on every CPU. AVX2 and AVX-512 kernels sum floats in
# different orders, so a float shown to its last digits (Python's repr of a float: 16 digits) or a large
# float rounded to a whole number (`:,.0f` of a perplexity near 50,000) passes only on the CPU it was stored
# on. Round it (to 4 decimals, or to 3-4 significant digits), or print a comparison instead.
LONG_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d{5,}")
WHOLE_NUMBER = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?![\d.,])|(?<![\w.,])\d{5,}(?![\d.,])")
# integers of five or more significant digits that checked cells with a `.0f` format print, each exact
EXACT = {"50257": "GPT-2's vocabulary size", "50,257": "GPT-2's vocabulary size",
         "1,558": "GPT-2 XL's parameters in millions (integer arithmetic)",
         "1,638": "GPT-2 XL's untied parameters in millions (integer arithmetic)"}


def _significant_digits(number: str) -> int:
    return len(number.replace(",", "").strip("0"))


def _checked_cells(path: Path):
    for k, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in cell.source:
            text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                           for o in cell.get("outputs", []))
            yield k, cell.source, text


def unsteady_numbers(source: str, output: str) -> list[str]:
    """Numbers in a checked cell's output whose last digits depend on the CPU's float kernels."""
    found = LONG_DECIMAL.findall(output)
    if re.search(r":[^{}\n]*\.0f\}", source):  # floats formatted as whole numbers
        found += [n for n in WHOLE_NUMBER.findall(output) if _significant_digits(n) > 4 and n not in EXACT]
    return found


def test_the_unsteady_number_rule_catches_what_failed_on_avx2():
    src = 'print(f"perplexity ≈ {perplexity(loss):,.0f} of {V:,} tokens")'
    assert unsteady_numbers(src, "perplexity ≈ 47,072 of 50,257 tokens\n") == ["47,072"]
    assert unsteady_numbers(src, "perplexity ≈ 47,100 of 50,257 tokens\n") == []
    assert unsteady_numbers("print(p.tolist())", "[0.2689414322376251, 0.7310585975646973]") == [
        "0.2689414322376251", "0.7310585975646973"]
    assert unsteady_numbers("print(t)", "tensor([0.1385, 0.2379])  sum: 1.0\n124,439,808 parameters") == []


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_checked_cells_print_no_float_to_digits_a_cpu_changes(path):
    bad = {k: found for k, source, text in _checked_cells(path) if (found := unsteady_numbers(source, text))}
    assert bad == {}, f"checked cells print floats to their last digits (round them): {bad}"


# ------------------------------------------------------------------------------------------ JupyterLab
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server (with jupyterlab-myst) over a copy of the chapters, without windowing."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "chapters", root / "chapters",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.dot"))
    settings = root / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port = _free_port()
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.token=",
         "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True", "--allow-root", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within a minute")
        yield url, root
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("name", ["appendix_serving.ipynb", "10_preference_tuning.ipynb"])
def test_a_chapter_reads_as_prose_with_its_numbers_and_diagrams_in_jupyterlab(lab, browser, name):
    url, _ = lab
    values = [plain_text(r) for _, r in stored_values(ROOT / "chapters" / name)]
    assert values, f"{name} has inline expressions to show"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{url}/lab/tree/chapters/{name}", wait_until="domcontentloaded", timeout=120_000)
        # cells rendered by jupyterlab-myst
        page.wait_for_selector(".jp-MarkdownCell .myst", state="attached", timeout=120_000)
        page.wait_for_function("n => document.querySelectorAll('.jp-MarkdownCell').length >= n",
                               arg=len(markdown_cells(ROOT / "chapters" / name)), timeout=60_000)
        page.wait_for_timeout(3000)  # MyST renders each cell asynchronously
        text = page.evaluate("[...document.querySelectorAll('.jp-MarkdownCell .myst')]"
                             ".map(e => e.textContent).join(' ')")
        assert "{eval}" not in text and "{glue" not in text
        missing = [v for v in values if v not in text]
        assert not missing, f"values not shown in JupyterLab: {missing[:5]}"
        images = page.evaluate("[...document.querySelectorAll('.jp-MarkdownCell img')]"
                               ".map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert images and all(w > 0 for _, w in images), f"diagrams not drawn: {images}"
        (ROOT / "_build").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "_build" / f"jupyterlab-{Path(name).stem}.png"), full_page=False)
    finally:
        page.close()


def _sphinx(project: Path) -> subprocess.CompletedProcess:
    (project / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'book' / '_ext')!r})\n"
        "extensions = ['myst_nb', 'stored_eval']\nnb_execution_mode = 'off'\n")
    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(project),
                           str(project / "_out")], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_site_renders_stored_values_in_order_and_fails_without_one(tmp_path):
    from nbformat.v4 import new_markdown_cell, new_notebook

    def result(text):
        return {"status": "ok", "data": {"text/plain": text}, "metadata": {}}

    cell = new_markdown_cell("Loss {eval}`f\"{a:.2f}\"` then {eval}`n`; again {eval}`n`.")
    cell.metadata["user_expressions"] = [
        {"expression": 'f"{a:.2f}"', "result": result("'0.25'")},
        {"expression": "n", "result": result("3")}, {"expression": "n", "result": result("4")}]
    nb = new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "index.ipynb")
    run = _sphinx(tmp_path)
    assert run.returncode == 0, run.stderr
    html = (tmp_path / "_out" / "index.html").read_text()
    assert re.findall(r'stored-eval">([^<]*)<', html) == ["0.25", "3", "4"]
    cell.metadata["user_expressions"] = cell.metadata["user_expressions"][:2]  # the last value missing
    nbformat.write(nb, tmp_path / "index.ipynb")
    run = _sphinx(tmp_path)
    assert run.returncode != 0 and "no stored value" in run.stderr and "make execute" in run.stderr
