"""Log-likelihood of continuations given a context: the one measurement every task here is built on.

All continuations of one item are scored against **one** forward pass of their shared context: the context's
keys and values are computed once, copied into a batch-sized KV cache, and the continuations run as one
batch on top of it. Attention is causal, so this gives the same numbers as a plain forward of
context + continuation (``score_plain``, the reference the tests compare against).

Contexts longer than the model's window are cut from the left as lm-evaluation-harness does: of
context + continuation only the last ``context_length + 1`` tokens are kept (the last one is only a target).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Score:
    """One continuation's summed log-probability (nats), whether greedy decoding would have produced it
    token for token, and how many of its tokens were scored."""

    logprob: float
    greedy: bool
    n_tokens: int


def context_length(model: nn.Module) -> int:
    """How many positions the model attends over (``cfg.context_length`` of GPTModel and LlamaModel)."""
    return int(model.cfg.context_length)


def prefix_token(tokenizer) -> int:
    """The token an empty context becomes (lm-eval: BOS if the tokenizer has one, else end-of-text)."""
    for attr in ("bos_token_id", "eot_token", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer has no BOS or end-of-text token to stand for an empty context; "
                     "give every item a non-empty context")


def split_request(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) the way lm-eval splits them.

    The continuation's ids are those of ``context + continuation`` after the context's ids, so a word is
    tokenized as it would be in running text. An empty context becomes :func:`prefix_token`.
    """
    if not context:
        return [prefix_token(tokenizer)], tokenizer.encode(continuation)
    ctx = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    return ctx, whole[len(ctx):]


def _logprobs(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def score_plain(model: nn.Module, context: list[int], continuation: list[int]) -> Score:
    """The reference: one forward of context + continuation (left-truncated as lm-eval does)."""
    n_ctx = context_length(model)
    whole = (list(context) + list(continuation))[-(n_ctx + 1):]
    inp = torch.tensor([whole[:-1]], device=_device(model))
    lp = _logprobs(model(inp)[0])                                        # (T, V)
    n = min(len(continuation), len(whole) - 1)
    targets = torch.tensor(whole[-n:], device=lp.device)
    rows = lp[-n:]                                                       # (n, V)
    logprob = rows.gather(1, targets[:, None]).sum().item()
    greedy = bool((rows.argmax(-1) == targets).all())
    return Score(logprob, greedy, n)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _fits(model: nn.Module, context: list[int], continuations: list[list[int]]) -> bool:
    longest = max(len(c) for c in continuations)
    return len(context) + longest - 1 <= context_length(model)


@torch.no_grad()
def score_choices(model: nn.Module, context: list[int], continuations: list[list[int]]) -> list[Score]:
    """Scores of every continuation after ``context``, from one forward of the context (see the module doc).

    Items too long for the model's window fall back to :func:`score_plain`, one continuation at a time, so
    each is truncated exactly as lm-eval truncates it.
    """
    if not context:
        raise ValueError("score_choices needs a non-empty context (split_request supplies a prefix token)")
    if any(len(c) == 0 for c in continuations):
        raise ValueError("a continuation has no tokens; nothing to score")
    if not _fits(model, context, continuations):
        return [score_plain(model, context, c) for c in continuations]
    device = _device(model)
    longest = max(len(c) for c in continuations)
    L, B = len(context), len(continuations)
    max_len = L + longest - 1
    one = model.new_cache(1, max_len=max_len)
    # the context's last position predicts every continuation's first token
    first = _logprobs(model(torch.tensor([context], device=device), one, last_only=True)[0, -1])  # (V,)
    rest = None
    if longest > 1:
        cache = model.new_cache(B, max_len=max_len)
        cache.reserve(L)  # the buffer grows on demand
        cache.k[:, :, :, :L] = one.k[:, :, :, :L]                          # (layers, 1 → B, heads, L, hd)
        cache.v[:, :, :, :L] = one.v[:, :, :, :L]
        cache.length = L
        # every continuation without its last token, right-padded: padding sits after the real tokens, so
        # causal attention keeps it from changing them
        inp = torch.zeros(B, longest - 1, dtype=torch.long, device=device)
        for i, c in enumerate(continuations):
            inp[i, :len(c) - 1] = torch.tensor(c[:-1])
        rest = _logprobs(model(inp, cache))                                # (B, longest-1, V)
    scores = []
    for i, c in enumerate(continuations):
        target = torch.tensor(c, device=device)
        rows = first[None] if rest is None or len(c) == 1 else torch.cat([first[None], rest[i, :len(c) - 1]])
        logprob = rows.gather(1, target[:, None]).sum().item()
        greedy = bool((rows.argmax(-1) == target).all())
        scores.append(Score(logprob, greedy, len(c)))
    return scores


def score_texts(model: nn.Module, tokenizer, context: str, continuations: list[str]) -> list[Score]:
    """:func:`score_choices` on strings: every continuation of ``context``, tokenized as lm-eval does."""
    pairs = [split_request(tokenizer, context, c) for c in continuations]
    ctx = pairs[0][0]
    return score_choices(model, ctx, [p[1] for p in pairs])


@torch.no_grad()
def score_batch(model: nn.Module, requests: list[tuple[list[int], list[int]]],
                max_tokens: int = 1024) -> list[Score]:
    """:func:`score_plain` of many (context, continuation) requests, several sequences per forward.

    Each request runs as its own right-padded row (padding after the real tokens, which causal attention
    never lets them see), left-truncated as lm-eval does. Rows are grouped by length into batches of at
    most ``max_tokens`` positions: for a small model on a CPU this turns many one-row products into a few
    large ones (a batch holds the logits of ``max_tokens`` positions, so it bounds memory too).
    """
    n_ctx = context_length(model)
    rows = []
    for ctx, cont in requests:
        if not ctx or not cont:
            raise ValueError("every request needs a non-empty context and continuation (see split_request)")
        whole = (list(ctx) + list(cont))[-(n_ctx + 1):]
        rows.append((whole, min(len(cont), len(whole) - 1)))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    scores: list[Score | None] = [None] * len(rows)
    device = _device(model)
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * (len(rows[order[stop]][0]) - 1) <= max_tokens:
            stop += 1
        batch = order[start:stop]
        longest = max(len(rows[i][0]) - 1 for i in batch)
        inp = torch.zeros(len(batch), longest, dtype=torch.long, device=device)
        for b, i in enumerate(batch):
            inp[b, :len(rows[i][0]) - 1] = torch.tensor(rows[i][0][:-1])
        logits = model(inp)                                                  # (B, T, V)
        for b, i in enumerate(batch):
            whole, n = rows[i]
            end = len(whole) - 1
            lp = _logprobs(logits[b, end - n:end])                           # (n, V)
            target = torch.tensor(whole[-n:], device=device)
            scores[i] = Score(lp.gather(1, target[:, None]).sum().item(), bool((lp.argmax(-1) == target).all()), n)
        start = stop
    return scores
