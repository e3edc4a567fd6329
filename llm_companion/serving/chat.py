"""The assistant of chapter 7 answering: stream its reply to one message in the prompt style it was tuned on.

The assistant is saved and loaded by :mod:`llm_companion.finetune.assistant` (:func:`save_assistant`,
:func:`load_assistant`), which records that style. ``llm-companion chat`` (:mod:`llm_companion.cli.chat`) is the
terminal loop around :func:`stream_reply`.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from llm_companion.data.tokenizer import decode_stream, encode_text
from llm_companion.finetune.instruct import format_prompt, prompt_style
from llm_companion.inference.generation import generate_stream

__all__ = ["decode_stream", "stream_reply"]


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
