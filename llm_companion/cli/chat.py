"""``llm-companion chat``: one terminal chat loop for every model the book can chat with.

``--model DIR`` (default ``models/assistant``) is chapter 7's assistant: each message is formatted in the
prompt style it was tuned on and answered on its own (it was tuned on single instructions, not
conversations). ``--model smollm2`` is chapter 8's SmolLM2-135M-Instruct with its ChatML template: it sees
the whole conversation, ``/reset`` starts over, and the oldest exchanges are forgotten when the context fills.
Both run the same loop (:func:`run_chat`), which gets each model's template inside its :class:`ChatModel`.
``--once "QUESTION"`` answers one question and exits, for scripts.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llm_companion.cli.errors import UserError
from llm_companion.finetune.adapters import prepare_for_inference
from llm_companion.finetune.assistant import load_assistant, tokenizer_for
from llm_companion.inference.quantize import add_weights_argument
from llm_companion.inference.smollm2 import SMOLLM2_NAMES, encode_chat, load_smollm2, stream_chat
from llm_companion.profiles import default_device
from llm_companion.serving.chat import stream_reply

Conversation = list[dict[str, str]]   # [{"role": "user" | "assistant", "content": ...}, ...]


@dataclass(frozen=True)
class ChatModel:
    """What the loop needs of a model: its answer to a conversation (prompt template included) and its greeting."""

    reply: Callable[[Conversation], Iterator[str]]      # the conversation so far -> the answer's text pieces
    greeting: str                                        # printed once before the first "you> "
    remembers: bool = False                              # sees earlier turns (then /reset starts over)
    fits: Callable[[Conversation], bool] = lambda conversation: True   # leaves room for an answer


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
                   help="a LoRA adapter folder in peft's format, written by `llm-companion finetune` (chapter 10) "
                        "or by peft's save_pretrained")
    add_weights_argument(p)


def main(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if args.model is not None and str(args.model).lower() in SMOLLM2_NAMES:
        return run_chat(smollm2_chat_model(args), once=args.once)
    return run_chat(assistant_chat_model(args), once=args.once)


def _sampling(args: argparse.Namespace) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed)


def assistant_chat_model(args: argparse.Namespace) -> ChatModel:
    """Chapter 7's saved assistant: its prompt style (e.g. Alpaca) around the latest message only."""
    model, meta = load_assistant(args.model, device=args.device or default_device())
    prepare_for_inference(model, adapter=args.adapter, weights=args.weights)
    tokenizer = tokenizer_for(meta)
    style = meta.get("prompt_style", "alpaca")
    where = args.model if args.model is not None else "models/assistant"
    return ChatModel(
        reply=lambda conversation: stream_reply(model, tokenizer, conversation[-1]["content"], style=style,
                                                **_sampling(args)),
        greeting=f"Chatting with {where} ({model.num_parameters():,} parameters, {style} prompts). "
                 f"Each message is answered on its own; /quit or Ctrl-D ends.")


def smollm2_chat_model(args: argparse.Namespace) -> ChatModel:
    """SmolLM2-135M-Instruct: the ChatML template around the whole conversation, as long as it fits the context."""
    with contextlib.redirect_stdout(sys.stderr):  # progress lines must not mix with the answer
        model, tokenizer, info = load_smollm2(device=args.device or default_device())
    prepare_for_inference(model, adapter=args.adapter, weights=args.weights)
    budget = model.cfg.context_length - args.max_new_tokens
    return ChatModel(
        reply=lambda conversation: stream_chat(model, tokenizer, conversation, **_sampling(args)),
        greeting=f"Chatting with {info.describe()}. The model sees the whole conversation "
                 f"(up to {model.cfg.context_length:,} tokens); /reset starts over, /quit or Ctrl-D ends.",
        remembers=True,
        fits=lambda conversation: len(encode_chat(tokenizer, conversation)) <= budget)


def run_chat(chat_model: ChatModel, *, once: str | None = None) -> int:
    """Read messages from the terminal and print the answers as they stream; ``once`` answers one and returns."""
    out = sys.stdout
    if once is not None:
        _print_answer(chat_model.reply([{"role": "user", "content": once}]), out)
        return 0
    print(chat_model.greeting, file=out, flush=True)
    history: Conversation = []
    while True:
        try:
            message = input("you> ").strip()
        except EOFError:
            print(file=out)
            return 0
        if not message:
            continue
        if message in ("/quit", "/exit"):
            return 0
        if message == "/reset" and chat_model.remembers:
            history = []
            continue
        history = (history if chat_model.remembers else []) + [{"role": "user", "content": message}]
        out.write("assistant> ")
        history.append({"role": "assistant", "content": _print_answer(chat_model.reply(history), out)})
        while len(history) > 2 and not chat_model.fits(history):
            history = history[2:]  # forget the oldest exchange


def _print_answer(pieces: Iterable[str], out) -> str:
    """Write the pieces as they come, then a newline; the whole answer."""
    text = []
    for piece in pieces:
        out.write(piece)
        out.flush()
        text.append(piece)
    out.write("\n")
    out.flush()
    return "".join(text)
