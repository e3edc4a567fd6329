"""Causal multi-head self-attention with a KV cache.

Two paths compute the same thing: the default calls ``F.scaled_dot_product_attention`` (fused kernels);
the explicit path spells out ``softmax(QKᵀ/√d + mask) V`` so the attention weights can be inspected.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llm_companion.models.config import GPTConfig
from llm_companion.models.kv_cache import KVCache


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention (GPT-2 layout: one fused q/k/v projection, one output projection)."""

    def __init__(self, cfg: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.layer_idx = layer_idx
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)  # fused W_q | W_k | W_v
        self.proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.attn_dropout = nn.Dropout(cfg.drop_rate)
        self.drop_p = cfg.drop_rate
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.use_sdpa = True  # set False to force the explicit path everywhere

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, *, return_weights: bool = False):
        """Attention output (B, T, C) for ``x`` (B, T, C); with ``return_weights`` also the weights (B, H, T, T')."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)                                  # 3 × (B, T, C)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)           # (B, H, T, hd)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer_idx, k, v)                          # (B, H, past+T, hd)

        weights = None
        if self.use_sdpa and not return_weights:
            drop = self.drop_p if self.training else 0.0
            if past == 0:  # no cached tokens: SDPA builds the causal mask itself
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=T > 1)
            else:          # the T new queries are the last of past+T positions
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, past + T, x.device),
                                                     dropout_p=drop)
        else:
            scores = (q @ k.transpose(-2, -1)) * self.scale                   # (B, H, T, past+T)
            scores = scores.masked_fill(~causal_mask(T, past + T, x.device), float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            out = self.attn_dropout(weights) @ v                               # (B, H, T, hd)

        out = out.transpose(1, 2).reshape(B, T, C)                             # (B, T, C)
        out = self.proj(out)
        return (out, weights) if return_weights else out


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """Boolean (n_queries, n_keys) mask, True where attention is allowed.

    The queries are the last ``n_queries`` positions, so query ``i`` sees keys ``0 … n_keys-n_queries+i``.
    """
    offset = n_keys - n_queries
    q = torch.arange(n_queries, device=device)[:, None]
    k = torch.arange(n_keys, device=device)[None, :]
    return k <= q + offset
