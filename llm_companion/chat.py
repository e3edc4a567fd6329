"""The assistant: save and load an instruction-tuned model, stream its answers, chat from the terminal.

``llm-companion chat --model models/assistant`` reads one message per line, formats it as an instruction in
the model's prompt style and prints the answer token by token. Each message is answered on its own (the
model was tuned on single instructions, not conversations). ``--once "QUESTION"`` answers one question and
exits, for scripts.
"""
from __future__ import annotations

import argparse
import codecs
import dataclasses
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .instruct import format_prompt, prompt_style
from .tokenizer import encode_text

ASSISTANT_FILE = "assistant.json"   # beside checkpoint.save_model's model.safetensors + config.json
TOKENIZERS = ("gpt2",)


class AssistantNotFound(FileNotFoundError):
    """No saved assistant where one was asked for."""


def default_assistant_dir() -> Path:
    from .artifacts import models_dir

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
    from .checkpoint import save_model

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
    from .checkpoint import load_model

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
    from .tokenizer import gpt2_tokenizer

    return gpt2_tokenizer()


def _token_bytes(tokenizer, token: int) -> bytes:
    try:
        return tokenizer.decode_single_token_bytes(token)
    except AttributeError:  # a tokenizer without byte-level access
        return tokenizer.decode([token]).encode("utf-8")


def stream_reply(model: nn.Module, tokenizer, message: str, *, style: str = "alpaca", max_new_tokens: int = 200,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = 123) -> Iterator[str]:
    """Answer ``message`` as an instruction, yielding text pieces as the model produces them."""
    from .generation import generate_stream

    st = prompt_style(style)
    device = next(model.parameters()).device
    idx = torch.tensor([encode_text(tokenizer, format_prompt(message, st))], device=device)   # (1, T)
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    tokens = generate_stream(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             eos_id=getattr(tokenizer, "eot_token", None), generator=gen)
    yield from decode_stream(tokens, tokenizer, stops=st.stops)


def decode_stream(tokens: Iterable[int], tokenizer, *, stops: tuple[str, ...] = ()) -> Iterator[str]:
    """Turn a stream of token ids into text pieces that are safe to print as they come.

    GPT-2 tokens are byte sequences and one character may span two tokens, so bytes go through an
    incremental UTF-8 decoder: half a character is held back until its other half arrives. Text that may be
    the start of a stop marker (a new section such as ``### Instruction:``) is held back too; the text ends at a
    complete marker (the generator is then closed, which ends generation). Leading and trailing whitespace
    is dropped.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending, started = "", False
    tokens = iter(tokens)
    try:
        for tok in tokens:
            pending += decoder.decode(_token_bytes(tokenizer, tok))
            if not started:
                pending = pending.lstrip()
                started = bool(pending)
            cut = min((p for p in (pending.find(m) for m in stops) if p != -1), default=-1)
            if cut != -1:
                if pending[:cut].rstrip():
                    yield pending[:cut].rstrip()
                return
            # hold back a possible marker start and the whitespace before it: an answer that ends there
            # must not end with a stray newline
            head = pending[:len(pending) - _marker_prefix_len(pending, stops)].rstrip()
            if head:
                yield head
                pending = pending[len(head):]
        pending += decoder.decode(b"", final=True)
        if pending.strip():
            yield pending.strip() if not started else pending.rstrip()
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()


def _marker_prefix_len(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the start of one of ``markers``."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best


# --------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, metavar="PATH",
                   help="directory written by save_assistant (default: models/assistant), or 'smollm2' for "
                        "SmolLM2-135M-Instruct with its chat template (chapter 8)")
    p.add_argument("--once", metavar="QUESTION", help="answer one question and exit")
    p.add_argument("--max-new-tokens", type=int, default=200, help="longest answer in tokens (default 200)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); e.g. 0.7 to sample")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest tokens")
    p.add_argument("--seed", type=int, default=123, help="random seed for sampling (default 123)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    p.add_argument("--adapter", type=Path, default=None, metavar="DIR",
                   help="a LoRA adapter folder written by `llm-companion finetune` (chapter 10)")
    from .quantize import add_weights_argument

    add_weights_argument(p)


def _answer(model, tokenizer, message: str, args, style: str, out) -> None:
    for piece in stream_reply(model, tokenizer, message, style=style, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_k=args.top_k, seed=args.seed):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()


def main(args: argparse.Namespace) -> int:
    from .profile import default_device

    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    if args.model is not None and str(args.model).lower() in ("smollm2", "smollm2-135m-instruct"):
        from .smollm2 import chat_main

        return chat_main(args)
    model, meta = load_assistant(args.model, device=args.device or default_device())
    if args.adapter is not None:
        from .adapters import load_adapter

        load_adapter(model, args.adapter)
    if getattr(args, "weights", "fp32") != "fp32":
        from .quantize import quantize_for_inference

        quantize_for_inference(model, args.weights)
    tokenizer = tokenizer_for(meta)
    style = meta.get("prompt_style", "alpaca")
    out = sys.stdout
    if args.once is not None:
        _answer(model, tokenizer, args.once, args, style, out)
        return 0
    where = args.model if args.model is not None else "models/assistant"
    print(f"Chatting with {where} ({model.num_parameters():,} parameters, {style} prompts). "
          f"Each message is answered on its own; /quit or Ctrl-D ends.", file=out, flush=True)
    while True:
        try:
            message = input("you> ")
        except EOFError:
            print(file=out)
            return 0
        message = message.strip()
        if not message:
            continue
        if message in ("/quit", "/exit"):
            return 0
        out.write("assistant> ")
        _answer(model, tokenizer, message, args, style, out)
