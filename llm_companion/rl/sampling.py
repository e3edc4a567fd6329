"""Sampling for reinforcement learning: a group of completions from one prefill, and batched greedy replies.

GRPO asks the policy for G completions of the same prompt. Running the prompt through the network G times would
repeat identical work: :func:`sample_group` runs it once (batch 1), copies the cached keys and values into G
rows (:func:`expand_cache`) and decodes the G completions as one batch with the KV cache — the same sharing as
chapter 9's multiple-choice scoring, where the context is computed once for every choice.

Completions are returned as token lists that end at (and include) the end-of-turn token when the model emitted
one within ``max_new_tokens``; a completion cut off by the limit has none, and the trainer scores it as it is.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn

from llm_companion.inference.fast import decoder
from llm_companion.inference.generation import next_token
from llm_companion.models.eval_mode import evaluating
from llm_companion.models.kv_cache import KVCache


def expand_cache(cache: KVCache, n: int) -> KVCache:
    """Copy a batch-1 cache into ``n`` identical rows (in place; returns it), so ``n`` continuations share a prefill."""
    if cache.shape[1] != 1:
        raise ValueError(f"expand_cache needs a cache of batch 1, got batch {cache.shape[1]}")
    cache.k = cache.k.repeat(1, n, 1, 1, 1)     # (L, n, KV, cap, hd): a copy, each row then grows on its own
    cache.v = cache.v.repeat(1, n, 1, 1, 1)
    n_layers, _, kv, hd = cache.shape
    cache.shape = (n_layers, n, kv, hd)
    return cache


def _decode(step, logits: torch.Tensor, cache: KVCache, max_new_tokens: int, *, temperature: float,
            eos_id: int | None, generator: torch.Generator | None, top_k: int | None) -> list[list[int]]:
    """Decode from last-position ``logits`` (B, V) with ``cache``; rows stop at ``eos_id`` (kept in the row)."""
    B = logits.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=logits.device)
    out = []
    for i in range(max_new_tokens):
        tok = next_token(logits, temperature=temperature, top_k=top_k, generator=generator)   # (B, 1)
        if eos_id is not None:
            tok = tok.masked_fill(done[:, None], eos_id)
        out.append(tok)
        if eos_id is not None:
            done |= tok[:, 0] == eos_id
            if bool(done.all()):
                break
        if i < max_new_tokens - 1:
            logits = step(tok, cache)[:, -1]
    rows = torch.cat(out, dim=1).tolist() if out else [[] for _ in range(B)]
    return [row[:row.index(eos_id) + 1] if eos_id in row else row for row in rows]


@torch.no_grad()
def sample_group(model: nn.Module, prompt: Sequence[int], n: int, *, max_new_tokens: int,
                 temperature: float = 1.0, top_k: int | None = None, eos_id: int | None = None,
                 generator: torch.Generator | None = None) -> list[list[int]]:
    """``n`` completions of one ``prompt`` (token ids), sampled at ``temperature`` from one shared prefill."""
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be at least 1, got n={n}, max_new_tokens={max_new_tokens}")
    device = next(model.parameters()).device
    with evaluating(model):
        step = decoder(model)
        cache = model.new_cache(1, max_len=len(prompt) + max_new_tokens)
        logits = step(torch.tensor([list(prompt)], device=device), cache)[:, -1]     # (1, V): the one prefill
        expand_cache(cache, n)
        logits = logits.expand(n, -1)                                                 # (n, V)
        return _decode(step, logits, cache, max_new_tokens, temperature=temperature, eos_id=eos_id,
                       generator=generator, top_k=top_k)


@torch.no_grad()
def greedy_replies(model: nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                   eos_id: int | None = None, batch_size: int = 32) -> list[list[int]]:
    """The greedy completion of every prompt, decoded in batches of prompts of equal length (no padding needed)."""
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    out: list[list[int] | None] = [None] * len(prompts)
    with evaluating(model):
        step = decoder(model)
        for length, members in sorted(by_length.items()):
            for s in range(0, len(members), batch_size):
                chunk = members[s:s + batch_size]
                cache = model.new_cache(len(chunk), max_len=length + max_new_tokens)
                idx = torch.tensor([list(prompts[i]) for i in chunk], device=device)   # (B, T)
                logits = step(idx, cache)[:, -1]
                rows = _decode(step, logits, cache, max_new_tokens, temperature=0.0, eos_id=eos_id,
                               generator=None, top_k=None)
                for i, row in zip(chunk, rows):
                    out[i] = row
    return out   # type: ignore[return-value]
