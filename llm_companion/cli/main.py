"""The ``llm-companion`` command line: one parser, one dispatcher, one rule for errors.

Each subcommand's flags (``add_arguments(parser)``) and entry point (``main(args) -> int``) live in its own
module of this package, ``llm_companion/cli/<name>.py`` (``chat``, ``classify``, ``eval``, ``fetch``,
``finetune``, ``generate``, ``pretrain``, ``serve``), listed in :data:`COMMANDS`; the library modules below
hold no argparse code. A mistake the user can fix (:class:`~llm_companion.cli.errors.UserError`, a missing
artifact, a bad value, a missing file) prints one line and exits with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import sys
from types import ModuleType

from llm_companion.cli import chat as cli_chat
from llm_companion.cli import classify as cli_classify
from llm_companion.cli import eval as cli_eval
from llm_companion.cli import fetch as cli_fetch
from llm_companion.cli import finetune as cli_finetune
from llm_companion.cli import generate as cli_generate
from llm_companion.cli import pretrain as cli_pretrain
from llm_companion.cli import serve as cli_serve
from llm_companion.cli.errors import UserError
from llm_companion.data.download import ArtifactError

__all__ = ["COMMANDS", "UserError", "build_parser", "main"]

# (subcommand, module with its add_arguments and main, one-line help)
COMMANDS: list[tuple[str, ModuleType, str]] = [
    ("fetch", cli_fetch, "download (or copy from a mirror) and verify the book's data"),
    ("pretrain", cli_pretrain, "pretrain a GPT on text (or the stand-in with --standin); torchrun-ready"),
    ("classify", cli_classify, "classify a message with the saved spam classifier (chapter 6)"),
    ("chat", cli_chat, "chat with the instruction-tuned assistant (chapter 7)"),
    ("generate", cli_generate, "continue a prompt with SmolLM2, a GGUF or a saved GPT (chapter 8)"),
    ("finetune", cli_finetune, "LoRA instruction tuning (sft) or DPO, writing an adapter (chapter 10)"),
    ("eval", cli_eval, "score a model on BLiMP, LAMBADA, HellaSwag, ARC, PIQA, ... (chapter 9)"),
    ("serve", cli_serve, "serve a model: OpenAI-compatible API and a chat page (appendix D)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-companion",
        description="The command line of the book 'Build a GPT from Scratch' (library llm_companion).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_handler=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
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
