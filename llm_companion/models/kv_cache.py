"""The KV cache: keys and values of every layer for the tokens seen so far, for both model families.

A GPT layer caches one key/value head per query head; a Llama layer with grouped-query attention caches only
its ``n_kv_heads`` shared heads. The buffer starts small and doubles when full, up to the context length, so a
model with an 8,192-token context does not reserve 8,192 positions to answer one question, and decoding costs
one small copy per layer and token instead of a ``torch.cat``.
"""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values (L, B, KV, capacity, hd) of a model's layers; ``length`` positions are filled."""

    def __init__(self, cfg, batch_size: int, *, max_len: int | None = None, device=None,
                 dtype=torch.float32, initial_len: int = 256):
        self.max_len = max_len or cfg.context_length
        n_kv_heads = getattr(cfg, "n_kv_heads", cfg.n_heads)  # GPT: every head has its own keys and values
        self.shape = (cfg.n_layers, batch_size, n_kv_heads, cfg.head_dim)
        capacity = min(self.max_len, initial_len)
        self.k = torch.empty(self._shape(capacity), device=device, dtype=dtype)  # (L, B, KV, cap, hd)
        self.v = torch.empty_like(self.k)
        self.length = 0  # tokens already stored (advanced by the model after all layers ran)

    def _shape(self, capacity: int) -> tuple[int, ...]:
        n_layers, batch, kv, hd = self.shape
        return (n_layers, batch, kv, capacity, hd)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def reserve(self, end: int) -> None:
        """Make room for positions up to ``end`` in every layer at once (doubling, up to ``max_len``)."""
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot append up to {end}")
        if end > self.capacity:
            capacity = min(self.max_len, max(end, 2 * self.capacity))
            for name in ("k", "v"):
                old = getattr(self, name)
                new = old.new_empty(self._shape(capacity))
                new[:, :, :, :self.length] = old[:, :, :, :self.length]
                setattr(self, name, new)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` (B, KV, T, hd) after the cached ones; return all keys/values so far (B, KV, end, hd)."""
        start, end = self.length, self.length + k.shape[2]
        self.reserve(end)  # only layer 0 sees the new length first
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (indices, in their new order), e.g. to drop finished sequences."""
        self.k = self.k[:, rows]
        self.v = self.v[:, rows]
        n_layers, _, kv, hd = self.shape
        self.shape = (n_layers, len(rows), kv, hd)

    def nbytes_per_token(self) -> int:
        """Bytes one more cached token costs (keys + values, every layer)."""
        n_layers, batch, kv, hd = self.shape
        return 2 * n_layers * batch * kv * hd * self.k.element_size()


def check_context(context_length: int, past: int, n_new: int) -> None:
    """Raise a ValueError naming the fix when ``past + n_new`` tokens do not fit the model's context."""
    if past + n_new > context_length:
        raise ValueError(
            f"input has {past + n_new} tokens but the model's context_length is {context_length}; "
            f"truncate to the last {context_length} tokens (generate() does this for you)")


def check_logits_at(mask: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """``mask`` as a (batch, length) boolean tensor, the positions whose logits a forward should return.

    Anything else raises a ValueError naming the expected shape.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (batch, length):
        what = (f"a {mask.dtype} tensor of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor)
                else type(mask).__name__)
        raise ValueError(f"logits_at must be a boolean tensor of shape ({batch}, {length}), like the input; "
                         f"got {what}")
    return mask
