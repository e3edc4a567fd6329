"""Sampling for reinforcement learning: a group of completions from one prefill, and batched greedy replies.

GRPO asks the policy for G completions of the same prompt. Running the prompt through the network G times would
repeat identical work: :func:`sample_groups` runs each prompt once, copies its cached keys and values into G
rows (:func:`expand_cache`) and decodes the completions as one batch with the KV cache — the same sharing as
chapter 9's multiple-choice scoring, where the context is computed once for every choice. Prompts of equal
length share a batch too (no padding needed), so several groups decode together, and the prefix all prompts of
a batch share (the chat template's system turn and the start of the question) runs once for the batch.

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
    """Repeat each row of a cache ``n`` times, in place (returns it): rows ``i*n … i*n+n-1`` continue prompt ``i``."""
    cache.keep_rows(torch.arange(cache.shape[1], device=cache.k.device).repeat_interleave(n))  # rows grow apart
    return cache


def _decode(step, logits: torch.Tensor, cache: KVCache, max_new_tokens: int, *, temperature: float,
            eos_id: int | None, generator: torch.Generator | None, top_k: int | None) -> list[list[int]]:
    """Decode from last-position ``logits`` (B, V) with ``cache``; rows stop at ``eos_id`` (kept in the row).

    Rows that finished are dropped from the batch (and the cache) once they are a quarter of it, so a few
    long replies do not keep the whole batch decoding.
    """
    B = logits.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    alive = list(range(B))                        # the output row of each batch row
    done = torch.zeros(B, dtype=torch.bool, device=logits.device)
    for i in range(max_new_tokens):
        tok = next_token(logits, temperature=temperature, top_k=top_k, generator=generator)   # (b, 1)
        if eos_id is not None:
            tok = tok.masked_fill(done[:, None], eos_id)
        for r, t, finished in zip(alive, tok[:, 0].tolist(), done.tolist()):
            if not finished:
                out[r].append(t)
        if eos_id is not None:
            done |= tok[:, 0] == eos_id
            if bool(done.all()):
                break
            if 4 * int(done.sum()) >= len(alive):
                keep = (~done).nonzero()[:, 0]
                cache.keep_rows(keep)
                tok, done, alive = tok[keep], done[keep], [alive[j] for j in keep.tolist()]
        if i < max_new_tokens - 1:
            logits = step(tok, cache)[:, -1]
    return out


def _prefill(model: nn.Module, step, prompts: Sequence[Sequence[int]], extra: int) -> tuple[torch.Tensor, KVCache]:
    """Last-position logits (B, V) and the filled cache of equal-length ``prompts``, room for ``extra`` tokens.

    The prefix the prompts share runs once, at batch 1, and its keys and values are copied into every row.
    """
    first = list(prompts[0])
    shared = len(first) - 1                       # at least one token of each prompt runs in its own row
    for p in prompts[1:]:
        shared = next((j for j in range(shared) if p[j] != first[j]), shared)
    device = next(model.parameters()).device
    cache = model.new_cache(1 if shared else len(prompts), max_len=len(first) + extra)
    if shared:
        step(torch.tensor([first[:shared]], device=device), cache)
        expand_cache(cache, len(prompts))
    idx = torch.tensor([list(p[shared:]) for p in prompts], device=device)       # (B, T - shared)
    return step(idx, cache)[:, -1], cache


def _by_length(prompts: Sequence[Sequence[int]], rows_per_prompt: int, max_rows: int) -> list[list[int]]:
    """Indices of ``prompts`` in batches of equal prompt length, each at most ``max_rows`` decoded rows."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    per_batch = max(1, max_rows // rows_per_prompt)
    return [members[s:s + per_batch] for _, members in sorted(by_length.items())
            for s in range(0, len(members), per_batch)]


@torch.no_grad()
def sample_groups(model: nn.Module, prompts: Sequence[Sequence[int]], n: int, *, max_new_tokens: int,
                  temperature: float = 1.0, top_k: int | None = None, eos_id: int | None = None,
                  generator: torch.Generator | None = None, max_rows: int = 64) -> list[list[list[int]]]:
    """``n`` completions of each prompt (token ids) at ``temperature``: one prefill per prompt, prompts of equal
    length decoded together in batches of at most ``max_rows`` rows. Returns one list of ``n`` per prompt."""
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be at least 1, got n={n}, max_new_tokens={max_new_tokens}")
    out: list[list[list[int]] | None] = [None] * len(prompts)
    with evaluating(model):
        step = decoder(model)
        for chunk in _by_length(prompts, n, max_rows):
            logits, cache = _prefill(model, step, [prompts[i] for i in chunk], max_new_tokens)
            logits = logits.repeat_interleave(n, dim=0)                               # (B·n, V): one prefill each
            expand_cache(cache, n)
            rows = _decode(step, logits, cache, max_new_tokens, temperature=temperature, eos_id=eos_id,
                           generator=generator, top_k=top_k)
            for j, i in enumerate(chunk):
                out[i] = rows[j * n:(j + 1) * n]
    return out   # type: ignore[return-value]


def sample_group(model: nn.Module, prompt: Sequence[int], n: int, **kwargs) -> list[list[int]]:
    """``n`` completions of one ``prompt`` from one shared prefill (:func:`sample_groups` for one prompt)."""
    return sample_groups(model, [prompt], n, **kwargs)[0]


@torch.no_grad()
def greedy_replies(model: nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                   eos_id: int | None = None, batch_size: int = 32) -> list[list[int]]:
    """The greedy completion of every prompt, decoded in batches of prompts of equal length (no padding needed)."""
    out: list[list[int] | None] = [None] * len(prompts)
    with evaluating(model):
        step = decoder(model)
        for chunk in _by_length(prompts, 1, batch_size):
            logits, cache = _prefill(model, step, [prompts[i] for i in chunk], max_new_tokens)
            rows = _decode(step, logits, cache, max_new_tokens, temperature=0.0, eos_id=eos_id,
                           generator=None, top_k=None)
            for i, row in zip(chunk, rows):
                out[i] = row
    return out   # type: ignore[return-value]
