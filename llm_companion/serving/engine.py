"""The model behind the server: one model, its tokenizer and its chat template, generating one request at a time.

An :class:`Engine` turns OpenAI-style ``messages`` into the prompt the model was tuned on — SmolLM2's ChatML
(:func:`llm_companion.inference.smollm2.encode_chat`) or the chapter-7 assistant's Alpaca prompt
(:func:`llm_companion.finetune.instruct.format_prompt`; that model was tuned on single instructions, so it answers the
last user message on its own, as ``llm-companion chat`` does) — and streams the reply through the library's
KV-cache :func:`~llm_companion.inference.generation.generate_stream`. Text comes out through
:func:`llm_companion.serving.chat.decode_stream`, the same decoder as the terminal ``chat``, so the server's greedy
reply equals ``llm-companion chat --once``. A lock makes generation one request at a time; a
:class:`threading.Event` per request, checked before every token, lets a caller stop it.
"""
from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from llm_companion.data.tokenizer import encode_text
from llm_companion.finetune.adapters import prepare_for_inference
from llm_companion.finetune.assistant import load_assistant, tokenizer_for
from llm_companion.finetune.instruct import format_prompt, prompt_style
from llm_companion.inference.generation import generate_stream
from llm_companion.inference.quantize import quantizes
from llm_companion.inference.smollm2 import IM_END, IM_START, encode_chat, load_smollm2
from llm_companion.serving.chat import decode_stream

ROLES = ("system", "user", "assistant")


class RequestError(ValueError):
    """A request the engine cannot serve as asked; ``param`` names the field, ``code`` an OpenAI-style code."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class Sampling:
    """What one request asks of generation (``temperature`` 0 is greedy; ``seed`` None draws one)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Outcome:
    """How a generation ended: token counts and OpenAI's ``finish_reason`` (``stop``, ``length``, or None if
    cancelled)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    cancelled: bool = False
    _exhausted: bool = field(default=False, repr=False)


class Engine:
    """One model ready to chat: ``template`` is ``"chatml"`` (SmolLM2) or ``"alpaca"`` (the chapter-7 assistant)."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str, template: str = "chatml",
                 description: str | None = None):
        if template not in ("chatml", "alpaca"):
            raise ValueError(f"template must be 'chatml' or 'alpaca', got {template!r}")
        self.model, self.tokenizer, self.name, self.template = model.eval(), tokenizer, name, template
        self.description = description or name
        self.context_length = int(model.cfg.context_length)
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()
        if template == "chatml":
            self.eos_id = tokenizer.eos_token_id
            self.stops: tuple[str, ...] = (IM_START, IM_END)
        else:
            self.eos_id = getattr(tokenizer, "eot_token", None)
            self.stops = prompt_style("alpaca").stops

    # ----------------------------------------------------------------------------------------- prompt
    def encode(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of the prompt for ``messages`` (each ``{"role", "content"}``), checked against the context."""
        if not messages:
            raise RequestError("'messages' must hold at least one message", param="messages")
        for i, m in enumerate(messages):
            if m.get("role") not in ROLES:
                raise RequestError(f"messages[{i}].role is {m.get('role')!r}; use one of {', '.join(ROLES)}",
                                   param=f"messages[{i}].role")
            if not isinstance(m.get("content"), str):
                raise RequestError(f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        if self.template == "chatml":
            ids = encode_chat(self.tokenizer, [{"role": m["role"], "content": m["content"]} for m in messages])
        else:
            users = [m["content"] for m in messages if m["role"] == "user"]
            if not users:
                raise RequestError("this model answers an instruction: add a message with role 'user'",
                                   param="messages")
            ids = encode_text(self.tokenizer, format_prompt(users[-1], "alpaca"))
        if len(ids) > self.context_length:
            raise RequestError(f"the prompt is {len(ids):,} tokens but this model's context is "
                               f"{self.context_length:,} tokens; shorten or drop earlier messages",
                               param="messages", code="context_length_exceeded")
        return ids

    # ------------------------------------------------------------------------------------- generation
    def stream(self, ids: list[int], sampling: Sampling, outcome: Outcome | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Text pieces of the reply to prompt ``ids``; ``outcome`` is filled in as it goes.

        Holds the engine's lock while it runs (one generation at a time). ``cancel``, checked before each
        token, ends the reply early (``outcome.cancelled``).
        """
        outcome = outcome if outcome is not None else Outcome()
        cancel = cancel if cancel is not None else threading.Event()
        outcome.prompt_tokens = len(ids)
        seed = sampling.seed if sampling.seed is not None else random.randrange(2**63)
        with self._lock:
            if cancel.is_set():
                outcome.cancelled = True
                return
            gen = torch.Generator(device=self.device).manual_seed(seed)
            idx = torch.tensor([ids], device=self.device)                                       # (1, T)
            tokens = generate_stream(self.model, idx, sampling.max_tokens, temperature=sampling.temperature,
                                     top_p=sampling.top_p, eos_id=self.eos_id, generator=gen, fast=True)
            counted = _counted(tokens, outcome, cancel)
            try:
                yield from decode_stream(counted, self.tokenizer, stops=self.stops + tuple(sampling.stop))
            finally:
                counted.close()
        if outcome.cancelled:
            outcome.finish_reason = None
        elif outcome._exhausted and outcome.completion_tokens >= sampling.max_tokens:
            outcome.finish_reason = "length"
        else:
            outcome.finish_reason = "stop"

    def reply(self, messages: Sequence[dict[str, str]], sampling: Sampling | None = None) -> tuple[str, Outcome]:
        """The whole reply to ``messages`` and its :class:`Outcome` (no server involved)."""
        outcome = Outcome()
        text = "".join(self.stream(self.encode(messages), sampling or Sampling(), outcome))
        return text, outcome


def _counted(tokens: Iterator[int], outcome: Outcome, cancel: threading.Event) -> Iterator[int]:
    """``tokens``, counted into ``outcome``, stopping before the next token once ``cancel`` is set."""
    try:
        while True:
            if cancel.is_set():
                outcome.cancelled = True
                return
            try:
                tok = next(tokens)
            except StopIteration:
                outcome._exhausted = True
                return
            outcome.completion_tokens += 1
            yield tok
    finally:
        tokens.close()


# ------------------------------------------------------------------------------------------- loading
def load_engine(model: str, *, adapter: str | None = None, weights: str = "fp32",
                device: str | torch.device = "cpu") -> Engine:
    """The engine for ``model``: ``"smollm2"``, ``"assistant"`` (``models/assistant``) or a saved assistant's
    directory; ``adapter`` (a LoRA directory) and ``weights`` (fp32, int8, q4) change the loaded model."""
    import contextlib
    import sys
    from pathlib import Path

    if str(model).lower() in ("smollm2", "smollm2-135m-instruct"):
        with contextlib.redirect_stdout(sys.stderr):  # progress lines
            net, tokenizer, info = load_smollm2(device=device)
        name, template, description = "smollm2-135m-instruct", "chatml", info.describe()
    else:
        directory = None if str(model) == "assistant" else Path(model)
        net, meta = load_assistant(directory, device=device)
        if meta.get("prompt_style", "alpaca") != "alpaca":
            raise ValueError(f"the server speaks the Alpaca prompt; {model} was tuned with "
                             f"{meta.get('prompt_style')!r} prompts")
        tokenizer = tokenizer_for(meta)
        name = "assistant" if directory is None else directory.resolve().name
        template = "alpaca"
        description = f"the chapter-7 assistant from {model} ({net.num_parameters():,} parameters)"
    net = prepare_for_inference(net, adapter=adapter, weights=weights)  # merges a loaded adapter to quantize
    if adapter is not None:
        name, description = f"{name}+{Path(adapter).name}", f"{description} with adapter {adapter}"
    if quantizes(weights):
        description = f"{description}, {weights} weights"
    return Engine(net, tokenizer, name=name, template=template, description=description)
