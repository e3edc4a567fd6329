"""``llm-companion fetch NAME|--all``: obtain verified copies of the book's artifacts (see :mod:`.artifacts`)."""
from __future__ import annotations

import argparse

from llm_companion.cli.errors import UserError
from llm_companion.data.artifacts import REGISTRY, fetch, fetch_all


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="artifact names (see --list)")
    p.add_argument("--all", action="store_true", help="fetch every dataset (not the large model weights)")
    p.add_argument("--list", action="store_true", help="list the registered artifacts and exit")


def main(args: argparse.Namespace) -> int:
    if args.list:
        for a in sorted(REGISTRY.values(), key=lambda a: (a.kind, a.name)):
            print(f"{a.name:<28} {a.kind:<6} {a.subdir + '/' if a.subdir else ''}{a.filename}  {a.description}")
        return 0
    if not args.names and not args.all:
        raise UserError("name an artifact (see `llm-companion fetch --list`) or pass --all")
    paths = fetch_all() if args.all else {}
    for name in args.names:
        paths[name] = fetch(name)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
