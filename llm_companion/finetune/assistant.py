"""The assistant of chapter 7 on disk: an instruction-tuned GPT saved with the prompt style it was tuned on.

:func:`save_assistant` writes the model (``model.safetensors`` + ``config.json``, as every saved model of the
library) and ``assistant.json`` (prompt style, tokenizer, base weights, notes); :func:`load_assistant` reads
it back for chapters 7-10, ``llm-companion chat``/``serve``/``eval`` (:func:`tokenizer_for` gives its
tokenizer), and :func:`llm_companion.serving.chat.stream_reply` answers in that style.
:func:`describe_assistant` names which assistant a chapter is using, in one line.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_companion.data.download import models_dir
from llm_companion.data.tokenizer import gpt2_tokenizer
from llm_companion.finetune.instruct import prompt_style
from llm_companion.models.checkpoint import load_model, save_model

ASSISTANT_FILE = "assistant.json"   # beside checkpoint.save_model's model.safetensors + config.json
TOKENIZERS = ("gpt2",)


class AssistantNotFound(FileNotFoundError):
    """No saved assistant where one was asked for."""


def default_assistant_dir() -> Path:
    return models_dir() / "assistant"


def _jsonable(info: Any) -> Any:
    """``info`` as plain JSON values (dataclasses and objects with ``__dict__`` become dicts)."""
    if dataclasses.is_dataclass(info) and not isinstance(info, type):
        info = dataclasses.asdict(info)
    elif hasattr(info, "_asdict"):
        info = info._asdict()
    elif hasattr(info, "__dict__") and not isinstance(info, (str, Path)):
        info = {k: v for k, v in vars(info).items() if not k.startswith("_")}
    return json.loads(json.dumps(info, default=str))


def save_assistant(model: nn.Module, directory: str | Path | None = None, *, prompt_style_name: str = "alpaca",
                   tokenizer: str = "gpt2", base: Any = None, notes: dict | None = None) -> Path:
    """Save an instruction-tuned model atomically (default ``models/assistant/``).

    The directory holds ``model.safetensors`` and ``config.json`` (the GPTConfig, as every saved model of
    the library) plus ``assistant.json``: prompt style, tokenizer name, which base weights were tuned
    (``base``, e.g. the ``info`` of ``load_pretrained``) and any ``notes`` (training settings, metrics).
    """
    prompt_style(prompt_style_name)  # validate
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; use one of {', '.join(TOKENIZERS)}")
    directory = Path(directory) if directory is not None else default_assistant_dir()
    base = _jsonable(base)
    if isinstance(base, dict):
        base.pop("local_path", None)  # machine-specific; WeightsInfo.path is the project-relative one
    meta = {"prompt_style": prompt_style_name, "tokenizer": tokenizer, "base": base,
            "notes": _jsonable(notes or {})}
    return save_model(model, directory, extra={ASSISTANT_FILE: meta})


def load_assistant(directory: str | Path | None = None, *, device: str | torch.device = "cpu",
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """Load a :func:`save_assistant` directory: ``(model in eval mode, metadata)``."""
    directory = Path(directory) if directory is not None else default_assistant_dir()
    if not (directory / ASSISTANT_FILE).is_file():
        what = "is not a saved assistant (no assistant.json)" if directory.is_dir() else "does not exist"
        raise AssistantNotFound(
            f"{directory} {what}; create one by running chapters/07_instruction_finetuning.ipynb "
            f"(it saves models/assistant/), or pass --model with the directory save_assistant() wrote")
    meta = json.loads((directory / ASSISTANT_FILE).read_text(encoding="utf-8"))
    model = load_model(directory, device=device)
    model.eval()
    return model, meta


def tokenizer_for(meta: dict[str, Any]):
    """The tokenizer an assistant was trained with."""
    name = meta.get("tokenizer", "gpt2")
    if name != "gpt2":
        raise ValueError(f"the assistant needs tokenizer {name!r}, which this library does not provide")
    return gpt2_tokenizer()


def describe_assistant(meta: dict[str, Any]) -> str:
    """One line naming a saved assistant: how it was tuned, from which weights, and why it was kept.

    Reads ``notes["recipe"]`` and ``notes["chosen_by"]`` (chapter 7 writes both) and the base weights'
    name; an assistant saved without them says so rather than guessing.
    """
    notes = meta.get("notes") or {}
    base = meta.get("base")
    name = (base.get("name") or base.get("weights")) if isinstance(base, dict) else base
    line = f"{notes.get('recipe') or 'tuning recipe not recorded'}, from {name or 'unrecorded base weights'}"
    if notes.get("chosen_by"):
        line += f"; kept because {notes['chosen_by']}"
    return line

