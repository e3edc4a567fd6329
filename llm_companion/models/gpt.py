"""The GPT model: token + position embeddings, a stack of pre-LayerNorm transformer blocks, a head."""
from __future__ import annotations

import math

import torch
from torch import nn

from llm_companion.models.attention import MultiHeadAttention
from llm_companion.models.config import GPTConfig
from llm_companion.models.kv_cache import KVCache, check_context, check_logits_at


class FeedForward(nn.Module):
    """Position-wise MLP: expand 4×, tanh-approximated GELU (as GPT-2), project back."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))                                 # (B, T, C) → (B, T, 4C) → (B, T, C)


class TransformerBlock(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)) — the pre-LayerNorm arrangement of GPT-2."""

    def __init__(self, cfg: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=cfg.ln_eps)
        self.attn = MultiHeadAttention(cfg, layer_idx)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=cfg.ln_eps)
        self.ff = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T, C) → (B, T, C)."""
        x = x + self.drop(self.attn(self.norm1(x), cache))
        x = x + self.drop(self.ff(self.norm2(x)))
        return x


def num_parameters(model: nn.Module, *, exclude_tied: bool = True) -> int:
    """Parameters of ``model``; with ``exclude_tied`` a tensor shared by two modules (a tied head) counts once."""
    params = model.parameters() if exclude_tied else (p for _, p in model.named_parameters(remove_duplicate=False))
    return sum(p.numel() for p in params)


class GPTModel(nn.Module):
    """A GPT-2-style decoder-only transformer. ``forward(idx)`` maps token ids (B, T) to logits (B, T, V)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.emb_dim, eps=cfg.ln_eps)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: scale the init of projections into the residual stream by 1/√(2·n_layers)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("ff.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) for token ids ``idx`` (B, T); with ``last_only`` just the last position's (B, 1, V);
        with ``logits_at``, a (B, T) boolean mask, just the marked positions' (N, V), in row-major order.

        With a ``cache`` the tokens continue the cached ones (their positions start at ``cache.length``).
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        check_context(self.cfg.context_length, past, T)
        # positions past … past+T-1: a slice of the table is the same lookup as pos_emb(arange)
        x = self.drop(self.tok_emb(idx) + self.pos_emb.weight[past:past + T])   # (B, T, C)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += T
        if last_only:  # generation needs only the next token's logits: the big head projects one row, not T
            x = x[:, -1:]
        elif logits_at is not None:  # a loss over some positions: the head projects only those rows
            x = x[check_logits_at(logits_at, B, T)]                           # (N, C)
        x = self.final_norm(x)                                                  # (B, T or 1, C) or (N, C)
        return self.out_head(x)                                                 # (B, T or 1, V) or (N, V)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache sized for this model, on its device and in its dtype."""
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch_size, max_len=max_len, device=p.device, dtype=p.dtype)

    def num_parameters(self, *, exclude_tied: bool = True) -> int:
        """Parameter count; a tied embedding/head matrix is counted once."""
        return num_parameters(self, exclude_tied=exclude_tied)
