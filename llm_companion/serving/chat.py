"""The assistant of chapter 7: save and load an instruction-tuned GPT, and stream its answers.

:func:`save_assistant` writes the model with the prompt style it was tuned on, so :func:`load_assistant` and
:func:`stream_reply` answer in that same style. ``llm-companion chat`` (:mod:`llm_companion.cli.chat`) is the
terminal loop around them.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_companion.data.artifacts import models_dir
from llm_companion.data.tokenizer import decode_stream, encode_text, gpt2_tokenizer
from llm_companion.finetune.instruct import format_prompt, prompt_style
from llm_companion.inference.generation import generate_stream
from llm_companion.models.checkpoint import load_model, save_model

__all__ = ["ASSISTANT_FILE", "AssistantNotFound", "decode_stream", "default_assistant_dir", "load_assistant",
           "save_assistant", "stream_reply", "tokenizer_for"]

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


def stream_reply(model: nn.Module, tokenizer, message: str, *, style: str = "alpaca", max_new_tokens: int = 200,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = 123) -> Iterator[str]:
    """Answer ``message`` as an instruction, yielding text pieces as the model produces them."""
    st = prompt_style(style)
    device = next(model.parameters()).device
    idx = torch.tensor([encode_text(tokenizer, format_prompt(message, st))], device=device)   # (1, T)
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    tokens = generate_stream(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             eos_id=getattr(tokenizer, "eot_token", None), generator=gen, fast=True)
    yield from decode_stream(tokens, tokenizer, stops=st.stops)
