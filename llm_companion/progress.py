"""Progress bars that look right everywhere.

In an interactive Jupyter session or a terminal this is ``tqdm.auto``. When a notebook is executed headless
(book build, nbval; the Makefile sets ``LLM_COMPANION_PROGRESS=plain``) a widget would be stored as an empty
box and a text bar as a stack of partial lines, so the bar prints one final line when it closes instead.
:func:`notice` prints the one-line status messages that go with long work (a download starting).
"""
from __future__ import annotations

import os
import sys

from tqdm import tqdm as _std_tqdm
from tqdm.auto import tqdm as _auto_tqdm

ENV_VAR = "LLM_COMPANION_PROGRESS"


class _Sink:
    def write(self, _s):  # discard intermediate refreshes
        pass

    def flush(self):
        pass


class _FinalLineTqdm(_std_tqdm):
    """A tqdm that renders nothing while running and one clean line on close."""

    def __init__(self, *args, **kwargs):
        kwargs["file"] = _Sink()
        kwargs.setdefault("mininterval", 3600.0)
        kwargs.setdefault("ascii", False)
        kwargs.setdefault("dynamic_ncols", False)
        kwargs.setdefault("ncols", 78)  # the book's output boxes are ~80 columns wide
        super().__init__(*args, **kwargs)

    def close(self):
        if self.disable or getattr(self, "_final_printed", False):
            return super().close()
        self._final_printed = True
        line = self.format_meter(**self.format_dict)
        super().close()
        print(line.strip(), file=sys.stdout, flush=True)


def progress(iterable=None, **kwargs):
    """``tqdm``-compatible progress bar; see the module docstring for how it renders."""
    mode = os.environ.get(ENV_VAR, "auto").lower()
    if mode == "off":
        kwargs["disable"] = True
        return _std_tqdm(iterable, **kwargs)
    if mode == "plain":
        return _FinalLineTqdm(iterable, **kwargs)
    return _auto_tqdm(iterable, **kwargs)


def notice(message: str) -> None:
    """A one-line status message (a download starting): on stderr in a terminal, so that a command's stdout
    stays clean for pipes, but on stdout in a notebook, where stderr is drawn as a red warning box."""
    in_notebook = "ipykernel" in sys.modules or os.environ.get(ENV_VAR, "").lower() == "plain"
    print(message, file=sys.stdout if in_notebook else sys.stderr, flush=True)
