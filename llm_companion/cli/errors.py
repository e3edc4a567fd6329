"""The one error type of the command line: a mistake the user can fix, printed as one line without a traceback.

It has its own module so that the subcommand modules (``cli_*.py``) can raise it without importing
:mod:`llm_companion.cli`, which imports them (no import cycle).
"""
from __future__ import annotations


class UserError(Exception):
    """An error the user can fix (a bad flag value, a missing argument); the CLI prints its message and exits 2."""
