"""Bits per byte: a language model's compression of text, comparable across tokenizers.

Perplexity is per *token*, and a tokenizer with longer tokens has fewer, harder-to-predict tokens, so two
models with different vocabularies cannot be compared by it. The total information the model assigns the
text does not depend on how it is cut up: ``bits = Σ −log₂ p(token)``; dividing by the text's UTF-8 bytes
gives a number every model can be held to (8 would be no model at all; gzip manages about 2–3).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llm_companion.evaluation.scoring import context_length, prefix_token
from llm_companion.progress import progress


@torch.no_grad()
def token_nll(model: nn.Module, ids: list[int], *, stride: int | None = None, desc: str | None = None,
              max_window: int = 1024) -> list[float]:
    """Negative log-likelihood (nats) of every token of ``ids[1:]`` given the tokens before it.

    Text longer than the window (the model's context, at most ``max_window`` tokens so the logits of one
    window stay a few hundred MB) is read in windows that advance by ``stride`` (half the window by
    default): every token is scored once, with at least ``window − stride`` tokens of context after the
    first window.
    """
    n_ctx = min(context_length(model), max_window)
    stride = stride or max(1, n_ctx // 2)
    device = next(model.parameters()).device
    nll: list[float] = []
    # the windows are planned first, so that the progress bar's total is the number of forwards run
    windows: list[tuple[int, int, int]] = []  # (begin, end, how many of its targets are new)
    done = 0
    for start in range(0, max(1, len(ids) - 1), stride):
        begin = max(0, start + stride - n_ctx) if start else 0
        end = min(len(ids), start + stride + 1) if start else min(len(ids), n_ctx + 1)
        if end - 1 <= done:
            continue
        windows.append((begin, end, end - 1 - done))
        done = end - 1
        if done >= len(ids) - 1:
            break
    for begin, end, new in progress(windows, desc=desc or "bits per byte",
                                    disable=desc is None and len(windows) < 4):
        window = torch.tensor([ids[begin:end]], device=device)
        lp = F.log_softmax(model(window[:, :-1])[0].float(), dim=-1)        # (T, V)
        targets = window[0, 1:]
        token_lp = lp.gather(1, targets[:, None])[:, 0]
        nll += (-token_lp[-new:]).tolist()
    return nll


def bits_per_byte(model: nn.Module, tokenizer, text: str, *, stride: int | None = None,
                  desc: str | None = None) -> dict:
    """``{"bits_per_byte", "bits", "bytes", "tokens", "token_perplexity"}`` of ``text`` under ``model``.

    The first token is predicted after the tokenizer's BOS / end-of-text token, so every byte is paid for.
    """
    ids = [prefix_token(tokenizer)] + tokenizer.encode(text)
    nll = token_nll(model, ids, stride=stride, desc=desc)
    n_bytes = len(text.encode("utf-8"))
    bits = sum(nll) / math.log(2)
    return {"bits_per_byte": bits / n_bytes, "bits": bits, "bytes": n_bytes, "tokens": len(nll),
            "token_perplexity": math.exp(sum(nll) / len(nll))}
