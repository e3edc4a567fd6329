"""Text generation: greedy, temperature, top-k and top-p (nucleus) sampling, with a KV cache.

Prompts longer than the model's context keep their last ``context_length`` tokens; once a sequence grows
past the context, each step sees the last ``context_length`` tokens (the cache is rebuilt for that window,
so cached and uncached generation give the same tokens). By default every step runs the model's own
``forward``; ``fast=True`` runs each one-token step as the compiled step of :mod:`llm_companion.inference.fast`
(same tokens, faster, for fp32 and quantized weights alike), which the chat, serving and evaluation commands use.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from llm_companion.inference.fast import decoder
from llm_companion.models.eval_mode import evaluating


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None to disable), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None to disable), got {top_p}")


def filter_logits(logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k and/or the top-p nucleus to -inf. ``logits``: (B, V)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]                 # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already cover top_p (the first always stays)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose the next token (B, 1) from last-position logits (B, V)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.inference_mode()
def _token_steps(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, *, temperature: float,
                 top_k: int | None, top_p: float | None, eos_id: int | None, use_cache: bool,
                 generator: torch.Generator | None, fast: bool = False) -> Iterator[torch.Tensor]:
    _check_sampling(temperature, top_k, top_p)
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be a non-empty (batch, tokens) tensor of ids, got shape {tuple(idx.shape)}")
    ctx = model.cfg.context_length
    with evaluating(model):
        if fast:
            step = decoder(model)
        else:
            def step(ids, cache):
                return model(ids, cache, last_only=True)

        seq = idx[:, -ctx:]
        cache = model.new_cache(seq.shape[0]) if use_cache else None
        logits = step(seq, cache)[:, -1]
        done = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
        for i in range(max_new_tokens):
            tok = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if eos_id is not None:
                tok = tok.masked_fill(done[:, None], eos_id)  # finished rows keep emitting eos
                done |= tok[:, 0] == eos_id
            yield tok
            if (eos_id is not None and bool(done.all())) or i == max_new_tokens - 1:
                return
            seq = torch.cat([seq, tok], dim=1)
            if seq.shape[1] > ctx:  # window slides: positions change, so recompute it
                seq = seq[:, -ctx:]
                cache = model.new_cache(seq.shape[0]) if use_cache else None
                logits = step(seq, cache)[:, -1]
            else:
                logits = step(tok if use_cache else seq, cache)[:, -1]


def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None, fast: bool = False,
             ) -> torch.Tensor:
    """Extend ``idx`` (B, T) by up to ``max_new_tokens`` tokens; return prompt + new ids.

    ``temperature=0`` is greedy decoding (``top_k``/``top_p`` are then irrelevant). Generation stops early
    once every row has produced ``eos_id``. Prompts longer than the context keep their last
    ``context_length`` tokens for the model, but the returned tensor starts with the whole prompt.
    ``fast=True`` computes the same logits through the compiled step of :mod:`llm_companion.inference.fast`.
    """
    new = list(_token_steps(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            eos_id=eos_id, use_cache=use_cache, generator=generator, fast=fast))
    return torch.cat([idx, *new], dim=1) if new else idx


def generate_stream(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                    use_cache: bool = True, generator: torch.Generator | None = None, fast: bool = False,
                    ) -> Iterator[int]:
    """Like :func:`generate` for one prompt (1, T), but yield each new token id as soon as it exists.

    The ``eos_id`` token itself is not yielded.
    """
    if idx.dim() != 2 or idx.shape[0] != 1:
        raise ValueError(f"generate_stream takes one prompt of shape (1, T), got {tuple(idx.shape)}")
    for tok in _token_steps(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            eos_id=eos_id, use_cache=use_cache, generator=generator, fast=fast):
        t = int(tok[0, 0])
        if eos_id is not None and t == eos_id:
            return
        yield t
