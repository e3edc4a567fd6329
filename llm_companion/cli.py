"""The ``llm-companion`` command line.

Each subcommand lives in the module that owns its concept and exposes ``add_arguments(parser)`` and
``main(args) -> int``; this file only lists them, so the command stays a thin shell over the library.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand, module that implements it, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("fetch", "llm_companion.fetch_cli", "download (or copy from a mirror) and verify the book's data"),
    ("pretrain", "llm_companion.pretrain", "pretrain a GPT on text (or the stand-in with --standin); torchrun-ready"),
    ("classify", "llm_companion.classification", "classify a message with the saved spam classifier (chapter 6)"),
    ("chat", "llm_companion.chat", "chat with the instruction-tuned assistant (chapter 7)"),
    ("generate", "llm_companion.generate_cli", "continue a prompt with SmolLM2, a GGUF or a saved GPT (chapter 8)"),
    ("finetune", "llm_companion.finetune_cli", "LoRA instruction tuning (sft) or DPO, writing an adapter (chapter 10)"),
    ("eval", "llm_companion.evaluation.cli", "score a model on BLiMP, LAMBADA, HellaSwag, ARC, PIQA, ... (chapter 9)"),
    ("serve", "llm_companion.serving.cli", "serve a model: OpenAI-compatible API and a chat page (appendix D)"),
]


class UserError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-companion",
        description="The command line of the book 'Build a GPT from Scratch' (library llm_companion).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_handler=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .artifacts import ArtifactError

    args = build_parser().parse_args(argv)
    try:
        return int(args._handler(args) or 0)
    except (UserError, ArtifactError, ValueError, FileNotFoundError) as e:
        print(f"llm-companion {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
