"""Draw the book's diagrams: every ``chapters/figures/*.dot`` (Graphviz source) to the ``.svg`` beside it.

The chapters show a diagram as a plain Markdown image, ``![what it shows](figures/NAME.svg)``, so it appears
on the site, in JupyterLab and on GitHub alike; the SVG is committed and drawn from its source by Debian's
``dot``. Each SVG records the sha256 of the source it was drawn from, so a stale drawing is detected
(``--check``, and tests/test_book_sources.py) without comparing Graphviz's output byte for byte.

    python tests/tools/figures.py            # draw the SVGs whose source changed (make figures)
    python tests/tools/figures.py --check    # exit 1 naming every SVG that is missing or stale
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

FIGURES = Path(__file__).resolve().parents[2] / "chapters" / "figures"
_STAMP = re.compile(r"<!-- source: (\S+) sha256 ([0-9a-f]{64}) -->")


def source_sha256(dot: Path) -> str:
    return hashlib.sha256(dot.read_bytes()).hexdigest()


def stamp_of(svg: Path) -> str | None:
    """The sha256 of the source an SVG was drawn from (None for a missing or unstamped file)."""
    if not svg.is_file():
        return None
    m = _STAMP.search(svg.read_text(encoding="utf-8"))
    return m.group(2) if m else None


def stale(folder: Path = FIGURES) -> list[Path]:
    """The ``.dot`` files whose ``.svg`` is missing or was drawn from another version of them."""
    return [dot for dot in sorted(folder.glob("*.dot")) if stamp_of(dot.with_suffix(".svg")) != source_sha256(dot)]


def draw(dot: Path) -> Path:
    """Draw ``dot`` to its ``.svg`` with Graphviz, stamped with the source's sha256."""
    exe = shutil.which("dot")
    if exe is None:
        raise SystemExit("Graphviz's `dot` is not installed: run `make graphviz` (Debian package graphviz)")
    fonts = [f"-{kind}fontname=DejaVu Sans" for kind in "GNE"]  # one sans-serif face for every label
    svg = subprocess.run([exe, "-Tsvg", *fonts, str(dot)], check=True, capture_output=True, text=True).stdout
    head, _, rest = svg.partition("\n")  # keep the XML declaration first
    stamp = f"<!-- source: {dot.name} sha256 {source_sha256(dot)} -->"
    out = dot.with_suffix(".svg")
    out.write_text(f"{head}\n{stamp}\n{rest}" if head.startswith("<?xml") else f"{stamp}\n{svg}",
                   encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report missing or stale drawings")
    ap.add_argument("--all", action="store_true", help="redraw every figure, not only the stale ones")
    args = ap.parse_args(argv)
    todo = sorted(FIGURES.glob("*.dot")) if args.all else stale()
    if args.check:
        for dot in todo:
            print(f"{dot.with_suffix('.svg').name} is missing or stale: run `make figures`", file=sys.stderr)
        return 1 if todo else 0
    for dot in todo:
        print(f"drew {draw(dot).relative_to(FIGURES.parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
