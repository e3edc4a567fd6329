"""The built site, opened in headless Chromium: every page in ``_toc.yml`` renders cleanly.

The site is built into a temporary folder with notebook execution off, as ``make book`` builds it (the
committed notebooks carry their outputs), and ``-W``, so ``_build/`` is never touched. Pages are served over a
local HTTP server so that a missing image or stylesheet shows up as a failed request.
"""
from __future__ import annotations

import functools
import http.server
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from book_toc import toc_files

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent


def toc_pages() -> list[str]:
    """Every document of ``_toc.yml`` that exists, as a path without suffix (root first)."""
    return [p for p in toc_files(ROOT) if any((ROOT / p).with_suffix(s).is_file() for s in (".md", ".ipynb"))]


PAGES = toc_pages()
BOOK_TITLE = yaml.safe_load((ROOT / "_config.yml").read_text())["title"]

# Output that must never reach a reader: tracebacks, widget placeholders or a stack of 0% bars,
# and absolute paths of the machine that built the page.
FORBIDDEN = {
    "traceback": re.compile(r"Traceback \(most recent call last\)"),
    "widget placeholder": re.compile(r"(HBox|FloatProgress|IntProgress)\(|IProgress not found"),
    "0% progress bar": re.compile(r"(?m)^.*\b0%\|.*$"),
    "absolute venv path": re.compile(r"(/[\w.-]+)+/(\.venv|site-packages|dist-packages)/"),
    "absolute project path": re.compile(re.escape(str(ROOT)) + r"/"),
}
# MyST roles and directives that reached the reader as text (outside code, where the book may show them)
UNRENDERED = re.compile(r"\{(eval|glue(:text)?|graphviz)\}")

# Known and harmless: with Sphinx 7.4, sphinx-thebe's inline config script (added after the builder starts)
# is emitted twice, so the second `const THEBE_JS_URL` throws. Thebe (live code cells) is not enabled here.
KNOWN_JS_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Build the book with -W into a temporary folder, notebooks not re-executed; return the HTML root."""
    tmp = tmp_path_factory.mktemp("site")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    # local Sphinx extensions are found relative to the config file, which now lives in tmp
    local = config.get("sphinx", {}).get("local_extensions") or {}
    for name, folder in local.items():
        local[name] = str(ROOT / folder)
    (tmp / "_config.yml").write_text(yaml.safe_dump(config))
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(ROOT), "--config", str(tmp / "_config.yml"), "--path-output", str(tmp), "-W"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        pytest.fail(f"jupyter-book build failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    return tmp / "_build" / "html"


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_toc_lists_the_first_chapter():
    assert PAGES[0] == "book/intro"
    assert "chapters/01_text_and_embeddings" in PAGES


@pytest.mark.parametrize("page_path", PAGES)
def test_page_renders_cleanly(page_path, server, browser):
    page = browser.new_page()
    failed, errors = [], []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("pageerror", lambda e: errors.append(str(e)) if str(e) not in KNOWN_JS_ERRORS else None)
    page.goto(f"{server}/{page_path}.html", wait_until="load")

    # title: the page's own heading, then the book's title
    h1 = page.locator("article h1").first.inner_text().strip().rstrip("#").strip()
    assert h1, "the page has no H1 heading"
    assert page.title().startswith(h1) or page_path == PAGES[0], page.title()
    assert BOOK_TITLE in page.title()

    # the sidebar links to this page (the root page is the navbar's home link)
    links = page.eval_on_selector_all(
        "nav.bd-docs-nav a, .navbar-brand", "els => els.map(e => new URL(e.href, location).pathname)")
    assert f"/{page_path}.html" in links or (page_path == PAGES[0] and any(
        link.endswith(("/index.html", f"/{page_path}.html", "/")) for link in links)), links

    # every image loaded
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.src, e.complete && e.naturalWidth])")
    broken = [src for src, width in images if not width]
    assert not broken, f"images that did not load: {broken}"

    # no error output, no sphinx error boxes, nothing that leaks the build machine or a broken progress bar
    assert page.locator(".cell_output .stderr, .cell_output .traceback, .cell_output .error").count() == 0
    assert page.locator(".system-message, .problematic").count() == 0
    text = page.locator("article").inner_text()
    for what, pattern in FORBIDDEN.items():
        match = pattern.search(text)
        assert match is None, f"{what} on the page: {match.group(0)[:200]!r}"

    prose = page.evaluate("""() => { const a = document.querySelector('article').cloneNode(true);
        a.querySelectorAll('code, pre, .highlight').forEach(e => e.remove()); return a.innerText; }""")
    raw = UNRENDERED.search(prose)
    assert raw is None, f"unrendered markup in the prose: {prose[max(0, raw.start() - 80):raw.end() + 80]!r}"

    assert not failed, f"failed requests: {failed}"
    assert not errors, f"JavaScript errors: {errors}"
    page.close()


def test_chapter_one_has_figures_and_collapsed_solutions(server, browser):
    page = browser.new_page()
    page.goto(f"{server}/chapters/01_text_and_embeddings.html", wait_until="load")
    figures = page.eval_on_selector_all(".cell_output img", "els => els.map(e => e.naturalWidth)")
    assert len(figures) >= 2 and all(w > 0 for w in figures)
    solutions = page.locator("details.solution, .solution.dropdown")
    assert solutions.count() >= 3
    exercise_titles = page.locator(".exercise .admonition-title").all_inner_texts()
    assert len(exercise_titles) >= 3 and all("Exercise" in t for t in exercise_titles)
    page.close()


def test_formulas_are_typeset_offline(server, browser):
    """MathJax comes from the copy `make mathjax` puts beside the static files, not from the web: in this
    headless browser nothing outside the test server can load, so typeset formulas prove the local copy works."""
    if not (ROOT / "book/_static/mathjax/MathJax.js").is_file():
        pytest.fail("book/_static/mathjax/ is missing: run `make mathjax` (it copies Debian's libjs-mathjax)")
    page = browser.new_page()
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server, "data:")) else None)
    page.goto(f"{server}/chapters/08_modern_llm.html", wait_until="load")
    page.wait_for_function("() => window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0 "
                           "&& document.querySelectorAll('.MathJax_CHTML').length > 0", timeout=30_000)
    untypeset = page.eval_on_selector_all(
        "span.math, div.math", "els => els.filter(e => !e.querySelector('.MathJax_CHTML')).length")
    assert untypeset == 0, f"{untypeset} formulas were left as LaTeX source"
    assert not outside, f"the page loaded from outside the site: {outside[:3]}"
    page.close()
