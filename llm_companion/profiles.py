"""The book's run profiles, read from one place.

``LLM_BOOK_PROFILE`` selects ``quick`` (default: every chapter in about a minute on 2 CPU cores) or
``full`` (book-scale runs for a reader with a GPU and internet). Chapters call :func:`choose` once, in a
visible cell, so the reader sees the values of both profiles and which one ran.

This is one of the environment variables the library reads; CONTRIBUTING.md ("Environment variables")
lists them all, with what each does and which module reads it.
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

ENV_VAR = "LLM_BOOK_PROFILE"
PROFILES = ("quick", "full")


class ProfileError(ValueError):
    """Raised for an unknown profile name."""


def current() -> str:
    """Return the active profile name (``quick`` unless ``LLM_BOOK_PROFILE`` says otherwise)."""
    name = os.environ.get(ENV_VAR, "quick").strip().lower() or "quick"
    if name not in PROFILES:
        raise ProfileError(f"{ENV_VAR}={name!r} is not a profile; use one of {', '.join(PROFILES)}")
    return name


def is_quick() -> bool:
    return current() == "quick"


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``mps`` on Apple silicon, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Settings(SimpleNamespace):
    """Chapter settings for the active profile; its repr is a small table of both profiles."""

    def __init__(self, active: str, quick: dict[str, Any], full: dict[str, Any]):
        super().__init__(**(quick if active == "quick" else full))
        object.__setattr__(self, "_table", (active, quick, full))

    def __repr__(self) -> str:
        active, quick, full = self._table
        keys = list(dict.fromkeys([*quick, *full]))
        width = max(len(k) for k in keys)
        mark = {"quick": "quick", "full": "full"}
        mark[active] += " *"
        col = max(18, *(len(repr(quick.get(k))) + 2 for k in keys))
        lines = [f"{'setting':<{width}}  {mark['quick']:<{col}}{mark['full']}"]
        lines += [f"{k:<{width}}  {quick.get(k, '-')!r:<{col}}{full.get(k, '-')!r}" for k in keys]
        lines.append(f"(* = active profile; set {ENV_VAR}=quick|full before starting Jupyter)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def choose(*, quick: dict[str, Any], full: dict[str, Any]) -> Settings:
    """Pick a chapter's settings for the active profile.

    Both dictionaries must have the same keys, so that a setting never silently exists in one profile only.
    """
    if set(quick) != set(full):
        raise ProfileError(f"quick and full settings differ in keys: {sorted(set(quick) ^ set(full))}")
    return Settings(current(), quick, full)
