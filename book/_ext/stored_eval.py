"""The ``{eval}`` role, rendered from the values stored in the notebook: one prose for the site and JupyterLab.

A chapter's prose states run-dependent numbers as inline expressions, ``{eval}`f"{acc:.1%}"```, in the
markdown cell right after the code that computes them. ``make execute`` (tests/tools/execute_book.py) runs
each markdown cell's expressions in the kernel at that point of the notebook and stores the results in the
cell's metadata under ``user_expressions``, the format JupyterLab's MyST extension (``jupyterlab-myst``)
reads and writes. So the same cell reads as a sentence with its numbers in JupyterLab (installed by
``make lab``), and this extension renders it on the site from the same stored values: the site never
re-executes a chapter. A missing or failed value is a build warning (the book is built with ``-W``).

myst-nb's own ``{eval}`` role asks a live kernel (``execution_mode: inline``); this one replaces it.
"""
from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes

EVAL_ROLE = re.compile(r"\{eval\}`([^`]+)`")
_QUOTED = re.compile(r"""^(["'])(.*)\1$""", re.DOTALL)


def expressions(markdown: str) -> list[str]:
    """The ``{eval}`` expressions of one markdown cell, in order."""
    return EVAL_ROLE.findall(markdown)


def plain_text(result: dict) -> str | None:
    """The text a stored result shows: ``text/plain`` with a string's quotes removed (as jupyterlab-myst does)."""
    if result.get("status") != "ok":
        return None
    text = (result.get("data") or {}).get("text/plain")
    if text is None:
        return None
    return _QUOTED.sub(r"\2", text)


def stored_values(notebook: str | Path) -> list[tuple[str, dict]]:
    """``[(expression, result)]`` of every markdown cell's stored ``user_expressions``, in document order."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    out = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            out += [(e["expression"], e["result"]) for e in cell.metadata.get("user_expressions", [])]
    return out


def _queue(env, docname: str) -> list[tuple[str, dict]]:
    """The values of ``docname`` not yet rendered (roles are rendered in document order)."""
    queues = env.temp_data.setdefault("stored_eval_queues", {})
    if docname not in queues:
        path = Path(env.doc2path(docname))
        queues[docname] = stored_values(path) if path.suffix == ".ipynb" else []
    return queues[docname]


def eval_role(name, rawtext, text, lineno, inliner, options=None, content=()):
    """Render ``{eval}`expr``` from the value ``make execute`` stored for it."""
    env = inliner.document.settings.env
    queue = _queue(env, env.docname)
    for k, (expression, result) in enumerate(queue):
        if expression == text:
            del queue[k]
            value = plain_text(result)
            if value is not None:
                return [nodes.inline(rawtext, value, classes=["stored-eval"])], []
            why = f"{result.get('ename', 'error')}: {result.get('evalue', '')}"
            break
    else:
        why = "no stored value"
    msg = inliner.reporter.warning(
        f"{{eval}}`{text}`: {why}. Execute the chapter with `make execute` (it stores every "
        f"inline expression's value in the notebook).", line=lineno)
    return [nodes.literal(rawtext, text)], [msg]


def setup(app):
    # registered after myst_nb, whose own `eval` role needs a live kernel
    app.add_role("eval", eval_role, override=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
