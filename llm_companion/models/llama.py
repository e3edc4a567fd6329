"""A Llama-architecture decoder (the shape of SmolLM2, Llama 2/3, Mistral), next to the GPT one.

What changes from GPT-2 (:mod:`llm_companion.models.gpt`), one piece at a time:

* LayerNorm → :class:`RMSNorm` (no mean subtraction, no bias);
* learned position embeddings → rotary position embeddings (:func:`rope_tables`, :func:`apply_rope`) applied
  to queries and keys, so attention scores depend on the offset between two tokens only;
* the GELU MLP → :class:`SwiGLU` (``down(silu(gate(x)) * up(x))``);
* multi-head → :class:`GroupedQueryAttention`: ``n_kv_heads`` key/value heads shared by groups of query heads,
  which shrinks the KV cache by ``n_heads / n_kv_heads``;
* no biases anywhere.

``LlamaModel`` speaks the same protocol as ``GPTModel`` (``forward(idx, cache, last_only=...)``,
``new_cache``, ``cfg.context_length``), so :func:`llm_companion.inference.generation.generate` runs both, and both use
one :class:`~llm_companion.models.kv_cache.KVCache`. :func:`~llm_companion.models.gguf_checkpoint.load_llama_gguf`
fills one from a llama.cpp GGUF file (e.g. SmolLM2-135M-Instruct in Q4_1). The compiled decoding step that
generation can opt into (the same arithmetic, one function of tensors) lives in :mod:`llm_companion.inference.fast`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm_companion.models.attention import causal_mask
from llm_companion.models.config import ConfigError, check_shape
from llm_companion.models.gpt import num_parameters
from llm_companion.models.kv_cache import KVCache, check_context, check_logits_at


class LlamaConfigError(ConfigError):
    """An invalid Llama configuration (or GGUF metadata that does not describe one)."""


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a Llama-style decoder. The defaults are SmolLM2-135M's."""

    vocab_size: int = 49152
    context_length: int = 8192
    emb_dim: int = 576
    n_heads: int = 9
    n_kv_heads: int = 3
    n_layers: int = 30
    hidden_dim: int = 1536        # SwiGLU inner width
    rope_theta: float = 100000.0  # SmolLM2 uses 1e5, not Llama 2's 1e4
    norm_eps: float = 1e-5
    tie_weights: bool = True

    def __post_init__(self) -> None:
        check_shape(self, ("vocab_size", "context_length", "emb_dim", "n_heads", "n_kv_heads", "n_layers",
                           "hidden_dim"), LlamaConfigError)
        if self.n_heads % self.n_kv_heads:
            raise LlamaConfigError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}): "
                                   f"each key/value head serves a whole group of query heads")
        if self.head_dim % 2:
            raise LlamaConfigError(f"head_dim ({self.head_dim}) must be even: RoPE rotates pairs of dimensions")
        if not self.rope_theta > 0 or not self.norm_eps > 0:
            raise LlamaConfigError("rope_theta and norm_eps must be > 0")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def replace(self, **changes: Any) -> LlamaConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], *, tie_weights: bool = True) -> LlamaConfig:
        """Read the config from GGUF metadata (``llama.block_count``, ``llama.rope.freq_base``, …).

        Whether the head is tied is a property of the tensors (no ``output.weight``), not of the metadata:
        :func:`load_llama_gguf` passes it.
        """
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise LlamaConfigError(f"GGUF architecture is {arch!r}; this model reads 'llama' files only")

        def get(key: str, default: Any = None) -> Any:
            value = meta.get(f"llama.{key}", default)
            if value is None:
                raise LlamaConfigError(f"GGUF metadata lacks llama.{key}")
            return value

        vocab = meta.get("llama.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or ()) or None
        n_heads = int(get("attention.head_count"))
        cfg = cls(
            vocab_size=int(vocab) if vocab else int(get("vocab_size")),
            context_length=int(get("context_length")),
            emb_dim=int(get("embedding_length")),
            n_heads=n_heads,
            n_kv_heads=int(get("attention.head_count_kv", n_heads)),
            n_layers=int(get("block_count")),
            hidden_dim=int(get("feed_forward_length")),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            # stored as float32: 9.99999974e-06; round it back to the decimal the model was trained with
            norm_eps=float(f"{float(get('attention.layer_norm_rms_epsilon')):.6g}"),
            tie_weights=tie_weights,
        )
        rope_dims = meta.get("llama.rope.dimension_count", cfg.head_dim)
        if rope_dims != cfg.head_dim:
            raise LlamaConfigError(f"partial RoPE ({rope_dims} of {cfg.head_dim} dims) is not supported")
        return cfg


LLAMA_PRESETS: dict[str, LlamaConfig] = {
    "smollm2-135m": LlamaConfig(),
    "llama-tiny": LlamaConfig(vocab_size=512, context_length=256, emb_dim=64, n_heads=4, n_kv_heads=2,
                              n_layers=2, hidden_dim=128, rope_theta=10000.0),
}


# --------------------------------------------------------------------------------------------- pieces
class RMSNorm(nn.Module):
    """``x / rms(x) * weight``: LayerNorm without the mean subtraction and without a bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()  # the mean of squares in fp32 even for a bf16 model (as Llama's reference code)
        h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float = 10000.0, *, device=None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of RoPE's rotation angles, each (max_len, head_dim).

    Dimension pair ``i`` of position ``m`` turns by the angle ``m · theta^(-2i/head_dim)``; both halves of the
    last axis hold the same angles (the "rotate halves" layout: pair ``i`` is dimensions ``i`` and
    ``i + head_dim/2``).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.arange(max_len, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (L, hd/2)
    angles = torch.cat([angles, angles], dim=-1)                                                   # (L, hd)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) → (-x2, x1)`` on the two halves of the last axis: a 90° turn of every pair (i, i + hd/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys ``x`` (B, H, T, hd) by the angles of their positions (``cos``/``sin``: (T, hd)).

    Rotate-halves convention, for weights in Hugging Face's layout (GGUF stores Q and K permuted for
    llama.cpp's adjacent-pairs convention; :func:`load_llama_gguf` un-permutes them).
    """
    return x * cos + rotate_half(x) * sin


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's row permutation of a Q or K weight (n_heads·hd, C).

    llama.cpp's converter reorders each head's rows from ``[first half, second half]`` to interleaved pairs
    ``[0, hd/2, 1, hd/2+1, …]`` so that its RoPE can rotate adjacent dimensions. This puts them back (the same
    ``reverse_permute`` transformers applies), so :func:`apply_rope` rotates the right pairs.
    """
    out, rest = w.shape[0], w.shape[1:]
    hd = out // n_heads
    return w.reshape(n_heads, hd // 2, 2, *rest).transpose(1, 2).reshape(out, *rest)


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's permutation (the inverse of :func:`unpermute_qk`), as its HF → GGUF converter applies it."""
    out, rest = w.shape[0], w.shape[1:]
    hd = out // n_heads
    return w.reshape(n_heads, 2, hd // 2, *rest).transpose(1, 2).reshape(out, *rest)


class SwiGLU(nn.Module):
    """The gated MLP of Llama: ``down(silu(gate(x)) ⊙ up(x))``, inner width ``hidden_dim``, no biases."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.up = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.down = nn.Linear(cfg.hidden_dim, cfg.emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                          # (B, T, C)
        return self.down(F.silu(self.gate(x)) * self.up(x))


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with ``n_heads`` query heads sharing ``n_kv_heads`` key/value heads, and RoPE."""

    def __init__(self, cfg: LlamaConfig, layer_idx: int = 0):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.group = cfg.n_heads // cfg.n_kv_heads  # query heads per key/value head
        self.layer_idx = layer_idx
        self.q = nn.Linear(cfg.emb_dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k = nn.Linear(cfg.emb_dim, cfg.kv_dim, bias=False)
        self.v = nn.Linear(cfg.emb_dim, cfg.kv_dim, bias=False)
        self.o = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.emb_dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        """(B, T, C) → (B, T, C); ``cos``/``sin`` (T, hd) are the rotation angles of x's positions."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)      # (B, H, T, hd)
        k = self.k(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)   # (B, KV, T, hd)
        v = self.v(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)   # (B, KV, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer_idx, k, v)                             # (B, KV, past+T, hd)
        k = k.repeat_interleave(self.group, dim=1)   # each key/value head serves `group` query heads
        v = v.repeat_interleave(self.group, dim=1)                                # (B, H, past+T, hd)
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:  # the T new queries are the last of past+T positions
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, past + T, x.device))
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)    # (B, T, H·hd)
        return self.o(out)


class LlamaBlock(nn.Module):
    """``x + Attn(RMSNorm(x))``, then ``x + SwiGLU(RMSNorm(x))``: pre-norm, as GPT-2, with Llama's parts."""

    def __init__(self, cfg: LlamaConfig, layer_idx: int = 0):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.attn = GroupedQueryAttention(cfg, layer_idx)
        self.ffn_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.ffn(self.ffn_norm(x))


class LlamaModel(nn.Module):
    """A Llama-style decoder. ``forward(idx)`` maps token ids (B, T) to logits (B, T, V)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.blocks = nn.ModuleList(LlamaBlock(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight
        # the rotation angles of every position, computed once (not saved with the weights)
        cos, sin = rope_tables(cfg.head_dim, cfg.context_length, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)                 # (context_length, hd)
        self.register_buffer("rope_sin", sin, persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) for ids ``idx`` (B, T); with ``last_only`` just the last position's (B, 1, V);
        with ``logits_at``, a (B, T) boolean mask, just the marked positions' (N, V), in row-major order.

        With a ``cache`` the tokens continue the cached ones (their positions start at ``cache.length``).
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        check_context(self.cfg.context_length, past, T)
        cos = self.rope_cos[past:past + T].to(self.tok_emb.weight.dtype)       # (T, hd)
        sin = self.rope_sin[past:past + T].to(self.tok_emb.weight.dtype)
        x = self.tok_emb(idx)                                                    # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.length += T
        if last_only:  # generation needs only the next token's logits
            x = x[:, -1:]
        elif logits_at is not None:  # a loss over some positions: the head projects only those rows
            x = x[check_logits_at(logits_at, B, T)]                            # (N, C)
        return self.out_head(self.final_norm(x))                                # (B, T or 1, V) or (N, V)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for this model, on its device and in its dtype."""
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch_size, max_len=max_len, device=p.device, dtype=p.dtype)

    def num_parameters(self, *, exclude_tied: bool = True) -> int:
        """Parameter count; a tied embedding/head matrix is counted once."""
        return num_parameters(self, exclude_tied=exclude_tied)


def weight_bytes_per_token(model: LlamaModel) -> int:
    """Bytes of weights one decoding step reads: every matrix once (the embedding row lookup is negligible)."""
    total = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "tok_emb.weight")
    if not model.cfg.tie_weights:
        return total
    return total + model.out_head.weight.numel() * model.out_head.weight.element_size()


def describe(cfg: LlamaConfig) -> str:
    """A one-line summary of a config, for printing."""
    return (f"{cfg.n_layers} layers, {cfg.n_heads} query heads / {cfg.n_kv_heads} key-value heads of "
            f"{cfg.head_dim} dims, width {cfg.emb_dim}, SwiGLU {cfg.hidden_dim}, vocab {cfg.vocab_size:,}, "
            f"context {cfg.context_length:,}, rope theta {cfg.rope_theta:g}")

