"""The ``llm-companion`` command line: the parser in ``main``, one module per subcommand."""
from llm_companion.cli.main import COMMANDS, UserError, build_parser, main

__all__ = ["COMMANDS", "UserError", "build_parser", "main"]
