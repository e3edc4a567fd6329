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


def plot_attention(weights, labels: list[str], *, titles: list[str] | None = None, ncols: int | None = None,
                   annotate: bool | None = None, cmap: str = "viridis", label: str = "attention weight"):
    """Heatmaps of attention weights: one panel per (n_queries, n_keys) matrix in ``weights``.

    ``weights`` is a (n, n) tensor, an (H, n, n) stack (e.g. one head per panel) or a list of matrices;
    ``labels`` names the tokens. Cells show their values when the matrix is small (``annotate``).
    ``-inf`` entries (masked scores) are drawn blank. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    mats = [weights] if getattr(weights, "dim", lambda: 0)() == 2 else list(weights)
    mats = [torch.as_tensor(m).detach().float().cpu() for m in mats]
    n = len(mats)
    ncols = ncols or min(n, 4)
    nrows = -(-n // ncols)
    size = 0.45 * len(labels) + 1.2
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.6, size * nrows), squeeze=False,
                             layout="constrained")
    annotate = len(labels) <= 8 if annotate is None else annotate
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        m = mats[i]
        finite = torch.where(torch.isfinite(m), m, torch.nan)  # masked (-inf) cells are left blank
        vmin, vmax = min(0.0, float(finite.nan_to_num(0).min())), max(1e-9, float(finite.nan_to_num(0).max()))
        im = ax.imshow(finite.numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(m.shape[1]), labels[-m.shape[1]:], rotation=60, ha="right")
        ax.set_yticks(range(m.shape[0]), labels[-m.shape[0]:])
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
        if titles:
            ax.set_title(titles[i])
        if annotate:
            for r in range(m.shape[0]):
                for c in range(m.shape[1]):
                    v = float(m[r, c])
                    light = math.isfinite(v) and v < vmin + 0.6 * (vmax - vmin)
                    ax.text(c, r, f"{v:.2f}" if math.isfinite(v) else "−∞", ha="center", va="center",
                            fontsize=7, color="white" if light else "black")
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    plt.close(fig)  # the caller displays it; don't let pyplot show it a second time
    return fig
