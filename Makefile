# The two commands of the book: `make book` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# The local CPU wheel on the authors' machines; elsewhere any torch >= 2.4 works (override TORCH_SPEC).
TORCH_SPEC ?= torch==2.13.0

# Notebook progress bars print one final line instead of widgets when executed headless.
export LLM_COMPANION_PROGRESS ?= plain
export TF_CPP_MIN_LOG_LEVEL ?= 3
export TF_ENABLE_ONEDNN_OPTS ?= 0
export PYDEVD_DISABLE_FILE_VALIDATION ?= 1

MATHJAX_SRC ?= /usr/share/javascript/mathjax
MATHJAX_DST := book/_static/mathjax

.PHONY: book test test-avx2 install data chromium graphviz mathjax system unit fast lint notebooks execute figures lab notebooks-gpt2 clean help

help:
	@echo "make book   - build the static site into _build/html (jupyter-book build . -W)"
	@echo "make test   - run the unit tests and execute every chapter with nbval"
	@echo "make fast   - the unit tests without the slow and browser ones (about a minute)"
	@echo "make lint   - ruff over the library, tests, benchmarks and the chapters' code cells"
	@echo "make execute - re-execute every chapter in place, in order, on an idle machine (for commit)"
	@echo "make figures - redraw the diagrams (chapters/figures/*.dot -> .svg) whose source changed"
	@echo "make lab    - open the chapters in JupyterLab with MyST (prose with its numbers, diagrams)"
	@echo "make notebooks-gpt2 - chapters 5-7, 9, 10 on a random GPT-2-small-shaped checkpoint (LLM_COMPANION_GPT2_DIR)"
	@echo "make test-avx2 - make test on the AVX2 code paths (no AVX-512, no native bf16), forced on any x86 CPU"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[book,test,tf,serve]"
	@touch $@

install: $(STAMP)

data: install
	$(VENV)/bin/llm-companion fetch --all

# Debian's chromium for the browser test (never a downloaded browser build).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Install Debian's chromium (sudo apt-get install chromium) for the browser test"; exit 1; fi; }

# Debian's graphviz draws the concept diagrams (chapters/figures/*.dot -> .svg, `make figures`).
graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; \
	  else echo "Install Debian's graphviz (sudo apt-get install graphviz) to draw the book's diagrams"; exit 1; fi; }

# Debian's MathJax 2 (libjs-mathjax), the part the pages use (~3 MB), copied next to the site's static files so
# that formulas render offline; without it book/_static/mathjax-loader.js falls back to a CDN.
mathjax:
	@test -f $(MATHJAX_DST)/MathJax.js || { \
	  if [ ! -f $(MATHJAX_SRC)/MathJax.js ] && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjs-mathjax >/dev/null; fi; \
	  if [ -f $(MATHJAX_SRC)/MathJax.js ]; then \
	    mkdir -p $(MATHJAX_DST)/config $(MATHJAX_DST)/jax/output $(MATHJAX_DST)/fonts/HTML-CSS/TeX && \
	    cp -rL $(MATHJAX_SRC)/MathJax.js $(MATHJAX_SRC)/extensions $(MATHJAX_DST)/ && \
	    cp -L $(MATHJAX_SRC)/config/TeX-AMS_CHTML-full.js $(MATHJAX_DST)/config/ && \
	    cp -rL $(MATHJAX_SRC)/jax/input $(MATHJAX_SRC)/jax/element $(MATHJAX_DST)/jax/ && \
	    cp -rL $(MATHJAX_SRC)/jax/output/CommonHTML $(MATHJAX_DST)/jax/output/ && \
	    cp -rL $(MATHJAX_SRC)/fonts/HTML-CSS/TeX/woff $(MATHJAX_DST)/fonts/HTML-CSS/TeX/; \
	  else echo "No local MathJax (sudo apt-get install libjs-mathjax): the site's formulas will load MathJax from a CDN"; fi; }

# The Debian packages the book and its tests use, installed only where missing (root runs apt-get).
system: graphviz chromium mathjax

book: data graphviz chromium mathjax
	$(VENV)/bin/jupyter-book build . -W

# every Debian tool a test calls is a prerequisite here (tests/test_makefile.py checks it): the site test
# draws diagrams with `dot` and opens pages in `chromium`; formulas need the local MathJax copy.
unit: data graphviz chromium mathjax
	$(PY) -m pytest tests

# The quick inner loop: no test marked slow (> ~5 s) or browser (needs Chromium and a built site).
fast: data
	$(PY) -m pytest -q -m "not slow and not browser" tests

# Rules and line length live in pyproject.toml ([tool.ruff]); the chapters' code cells are checked too, at 80
# columns and in `ruff format`'s one style (chapters/ruff.toml; `ruff format chapters` fixes them).
lint: install
	$(VENV)/bin/ruff check llm_companion tests benchmarks chapters
	$(VENV)/bin/ruff format --check chapters

# appendix D screenshots the chat page in Debian's chromium; NOTEBOOKS narrows the run (default: every chapter)
NOTEBOOKS ?= chapters/
notebooks: data chromium
	$(PY) -m pytest --nbval-lax --nbval-cell-timeout=900 --nbval-sanitize-with chapters/sanitize.cfg $(NOTEBOOKS)

# Execute every chapter in place, in toc order, one after another (quick profile), recording wall time, machine,
# threads and load in each notebook's metadata: the committed outputs come from one such run on an idle machine.
# It also stores each {eval} expression's value in its markdown cell (the prose's numbers, site and JupyterLab).
execute: data chromium
	$(PY) tests/tools/execute_book.py

# The diagrams are committed SVGs drawn from Graphviz sources, so JupyterLab and GitHub show them too.
figures: graphviz
	$(PY) tests/tools/figures.py

# JupyterLab with jupyterlab-myst (installed with the book extra): markdown cells render as MyST, and {eval}
# shows the values `make execute` stored, so a chapter reads as prose with its numbers before any cell runs.
lab: data
	$(VENV)/bin/jupyter lab chapters/

# Chapters 5-7, 9 and 10 on a random gpt2-small (124M) in OpenAI's layout, given through LLM_COMPANION_GPT2_DIR:
# the path of a reader who has GPT-2 files, at GPT-2's real size and cost. The committed notebooks are not rewritten.
notebooks-gpt2: data
	$(PY) tests/tools/gpt2_shaped.py

test: unit notebooks

# An AVX2-only CPU (AMD Zen 2/3, Intel client CPUs) runs other kernels than an AVX-512 server: floats sum in another
# order and bf16 is emulated. These variables hold PyTorch, oneDNN and MKL to their AVX2 paths on any x86 CPU
# (tests/test_precision.py checks that they take effect), so one machine tries both kinds.
AVX2_PATHS := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
test-avx2:
	$(AVX2_PATHS) $(MAKE) test

clean:
	rm -rf _build
