"""The speed paths of inference, in one place: what generation, chat, serving and evaluation opt into.

The model modules (:mod:`~llm_companion.models.gpt`, :mod:`~llm_companion.models.llama`) are written to be read; this
module computes the same next-token logits faster, reading the same parameters, and the tests hold both to
1e-5. :func:`decoder` returns the function :func:`~llm_companion.inference.generation.generate` calls with
``fast=True``. Three tricks, each measured (history and numbers in ``benchmarks/README.md``):

* **Last position only.** Generation needs the next token's logits: the last block computes keys and values
  for every position (later tokens attend to them) but its query, MLP and the vocabulary head for the last
  position only.
* **Row split.** Decoding multiplies one row of activations by every weight matrix; on some CPUs one-row
  ``F.linear`` streams the weight on one core. Multiplying the two halves of the weight's rows in one ``bmm``
  gives each core half (no copy: the halves are views). Whether it pays depends on the CPU, so it is measured
  once per weight shape (:func:`use_row_split`); ``LLM_COMPANION_ROW_SPLIT=1``/``0`` forces it.
* **One compiled decoding step for Llama.** A SmolLM2 step is ~600 small ops; :func:`decode_layers` runs all
  30 layers as one function of tensors compiled by ``torch.jit.script`` (``LLM_COMPANION_TORCHSCRIPT=0``
  runs the same function in Python), with RoPE for one position as a product with a rotation matrix.
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llm_companion.models.attention import causal_mask
from llm_companion.models.gpt import GPTModel
from llm_companion.models.kv_cache import KVCache, check_context
from llm_companion.models.llama import LlamaModel


# ------------------------------------------------------------------------------------------ row split
def row_split_product(row: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``row @ weight.T`` for one row (1, n_in) → (1, n_out), as one ``bmm`` over the two halves of
    ``weight``'s rows. Plain tensor code that TorchScript compiles too (the Llama decoding step calls it)."""
    n_out, n_in = weight.shape[0], weight.shape[1]
    half = n_out // 2
    # (2, n_in, 1) as the transpose of a row: with this (column-major) stride the CPU BLAS takes a path
    # about 4x faster than with the row-major (n_in, 1) view of the same numbers (measured)
    v = row.reshape(1, n_in).t().expand(2, n_in, 1)
    y = torch.bmm(weight[: 2 * half].view(2, half, n_in), v).reshape(1, 2 * half)   # (1, 2·half)
    if n_out % 2:  # an odd row count (GPT-2's 50,257-token head): the last row on its own
        y = torch.cat([y, torch.mm(row.reshape(1, n_in), weight[-1:].t())], dim=1)
    return y


def row_split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a single row ``x`` (..., n_in) with ``numel == n_in``, through
    :func:`row_split_product`. Always takes the split path (see :func:`use_row_split`)."""
    y = row_split_product(x, weight)
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


_measured: dict[tuple[torch.Size, int], bool] = {}  # (weight shape, threads) → split was faster


def _split_is_faster(x: torch.Tensor, weight: torch.Tensor, rounds: int = 3) -> bool:
    """Time both paths on this weight (alternating, best of ``rounds``); the split must win by 15%."""
    row = x.reshape(1, weight.shape[1])
    best = {"split": float("inf"), "plain": float("inf")}
    paths = {"split": lambda: row_split_linear(row, weight), "plain": lambda: F.linear(row, weight)}
    for i in range(rounds + 1):
        for name, run in paths.items():
            t0 = time.perf_counter()
            run()
            if i:  # round 0 warms caches and is dropped
                best[name] = min(best[name], time.perf_counter() - t0)
    return best["split"] < 0.85 * best["plain"]


def use_row_split(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`row_split_linear` is the faster way to apply ``weight`` to ``x``.

    Only for one row of fp32 on a CPU with two or more threads and autograd off (batches of rows already use
    every core; bf16 has its own one-row path). Measured once per weight shape unless forced.
    """
    # cheapest tests first: a decoding step asks this ~200 times
    if (x.numel() != x.shape[-1] or torch.is_grad_enabled() or x.dtype != torch.float32
            or weight.dtype != torch.float32 or x.device.type != "cpu" or not weight.is_contiguous()):
        return False
    threads = torch.get_num_threads()
    if threads < 2:
        return False
    forced = os.environ.get("LLM_COMPANION_ROW_SPLIT")
    if forced == "0" or forced == "1":
        return forced == "1"
    key = (weight.shape, threads)
    choice = _measured.get(key)
    if choice is None:
        choice = _measured[key] = _split_is_faster(x, weight)
    return choice


def linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``layer(x)``, through the row-split kernel when ``layer`` is a plain ``nn.Linear`` and it pays.

    Wrapped layers (LoRA adapters, quantized layers, other subclasses) run their own ``forward``.
    """
    if type(layer) is nn.Linear:  # called directly: a decoding step makes hundreds of these calls
        weight, bias = layer.weight, layer.bias   # (each module attribute is a dictionary lookup)
        if use_row_split(x, weight):
            return row_split_linear(x, weight, bias)
        return F.linear(x, weight, bias)
    return layer(x)


# ------------------------------------------------------------------------------------------------ GPT
def _gpt_attention(attn: nn.Module, x: torch.Tensor, cache: KVCache | None, last_only: bool) -> torch.Tensor:
    """:class:`~llm_companion.models.attention.MultiHeadAttention` (eval mode); ``last_only``: the last query only."""
    B, T, C = x.shape
    layer = attn.qkv
    if last_only and T > 1 and type(layer) is nn.Linear:
        # keys/values for all positions, the query for the last one: rows of the fused weight are views
        w, b = layer.weight, layer.bias
        q = F.linear(x[:, -1:], w[:C], None if b is None else b[:C])           # (B, 1, C)
        k, v = F.linear(x, w[C:], None if b is None else b[C:]).split(C, dim=2)
    else:
        q, k, v = linear(x, layer).split(C, dim=2)
        q = q[:, -1:] if last_only else q
    Tq, H, hd = q.shape[1], attn.n_heads, attn.head_dim
    q = q.reshape(B, Tq, H, hd).transpose(1, 2)                                 # (B, H, Tq, hd)
    k = k.reshape(B, T, H, hd).transpose(1, 2)                                  # (B, H, T, hd)
    v = v.reshape(B, T, H, hd).transpose(1, 2)
    past = 0
    if cache is not None:
        past = cache.length
        k, v = cache.update(attn.layer_idx, k, v)                              # (B, H, past+T, hd)
    if Tq == 1:                      # one query at the end of the sequence sees every key
        out = F.scaled_dot_product_attention(q, k, v)
    elif past == 0:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, past + T, x.device))
    return linear(out.transpose(1, 2).reshape(B, Tq, C), attn.proj)            # (B, Tq, C)


def gpt_logits(model: GPTModel, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """``model(idx, cache, last_only=True)`` (B, 1, V), computing only what the last position needs."""
    B, T = idx.shape
    past = cache.length if cache is not None else 0
    check_context(model.cfg.context_length, past, T)
    x = model.tok_emb(idx) + model.pos_emb.weight[past:past + T]                # (B, T, C)
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        h = _gpt_attention(block.attn, block.norm1(x), cache, last_only=i == last)
        x = (x[:, -1:] if i == last else x) + h
        ff = block.ff
        x = x + linear(ff.act(linear(block.norm2(x), ff.fc)), ff.proj)
    if cache is not None:
        cache.length += T
    return linear(model.final_norm(x), model.out_head)                         # (B, 1, V)


# ---------------------------------------------------------------------------------------------- Llama
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """:class:`~llm_companion.models.llama.RMSNorm`'s arithmetic as a function (for :func:`decode_layers`)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, [x.shape[-1]], weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _product(x: torch.Tensor, weight: torch.Tensor, split: bool) -> torch.Tensor:
    """``x @ weight.T`` for rows ``x`` (B, n_in); ``split``: through the row-split kernel (one row only)."""
    if split:
        return row_split_product(x, weight)
    return torch.mm(x, weight.t())


def _add_product(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, split: bool) -> torch.Tensor:
    """``x + h @ weight.T``: a residual connection, added inside the product (``addmm``) where it can be."""
    if split:
        return x + _product(h, weight, split)
    return torch.addmm(x, h, weight.t())


def decode_layers(x: torch.Tensor, pos: int, mats: list[torch.Tensor], split: list[bool],
                  norms: list[torch.Tensor], cache_k: torch.Tensor, cache_v: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, n_heads: int, n_kv_heads: int, eps: float) -> torch.Tensor:
    """Every block of a one-token decoding step, as one function of tensors; returns the last hidden state.

    ``x`` (B, C) is the new token's embedding at position ``pos``; ``mats`` holds each layer's q, k, v, o,
    gate, up and down weights in that order (``split``: which take the row-split kernel), ``norms`` each
    layer's two RMSNorm weights; ``cache_k``/``cache_v`` (L, B, KV, capacity, hd) receive the new keys and
    values in place. ``cos`` and ``sin`` (hd,) are position ``pos``'s angles, the sine with the sign of
    ``rotate_half`` folded in. Written with type annotations and no Python objects so that TorchScript can
    run it; it is also correct as plain Python.
    """
    B, C = x.shape[0], x.shape[1]
    hd = cos.shape[0]
    half = hd // 2
    group = n_heads // n_kv_heads
    # x·cos + swap_halves(x)·sin as x @ rotation: cos on the diagonal, the signed sine where dimension d
    # takes its partner (d ± hd/2); built once per step, 5 ops fewer per head group and layer than elementwise
    rotation = torch.diag(cos)
    partner = torch.cat([torch.arange(half, hd), torch.arange(0, half)]).to(cos.device)
    rotation[partner, torch.arange(hd, device=cos.device)] = sin
    for i in range(len(norms) // 2):
        j = 7 * i
        h = _rms_norm(x, norms[2 * i], eps)
        # RoPE for one position is one small product per head with the rotation matrix
        q = torch.mm(_product(h, mats[j], split[j]).view(B * n_heads, hd), rotation).view(B, n_heads, hd)
        k = torch.mm(_product(h, mats[j + 1], split[j + 1]).view(B * n_kv_heads, hd), rotation)
        cache_k[i, :, :, pos] = k.view(B, n_kv_heads, hd)
        cache_v[i, :, :, pos] = _product(h, mats[j + 2], split[j + 2]).view(B, n_kv_heads, hd)
        # each group's query heads against their shared key/value head: (B, KV, group, hd)
        out = F.scaled_dot_product_attention(q.view(B, n_kv_heads, group, hd), cache_k[i, :, :, : pos + 1],
                                             cache_v[i, :, :, : pos + 1])
        x = _add_product(x, out.reshape(B, C), mats[j + 3], split[j + 3])
        h = _rms_norm(x, norms[2 * i + 1], eps)
        gated = F.silu(_product(h, mats[j + 4], split[j + 4])) * _product(h, mats[j + 5], split[j + 5])
        x = _add_product(x, gated, mats[j + 6], split[j + 6])
    return x


_compiled: list = []  # [decode_layers as TorchScript, or the Python function where scripting fails]


def _decode_function():
    """:func:`decode_layers`, compiled by ``torch.jit.script`` once per process (about a second).

    TorchScript runs the ~600 small ops of a step without Python's per-op overhead. Where scripting is
    unavailable or fails (it needs the ``.py`` source), or with ``LLM_COMPANION_TORCHSCRIPT=0``, the Python
    function runs, with the same results.
    """
    if os.environ.get("LLM_COMPANION_TORCHSCRIPT") == "0":
        return decode_layers
    if not _compiled:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript is in maintenance mode and may say so
                _compiled.append(torch.jit.script(decode_layers))
        except Exception:  # noqa: BLE001 - any failure to compile means: run the Python function
            _compiled.append(decode_layers)
    return _compiled[0]


def _decode_weights(model: LlamaModel) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """The weights :func:`decode_layers` takes, or ``None`` when a layer is not a plain bias-free ``nn.Linear``
    (a LoRA adapter, a quantized layer): those models take the modules' own path."""
    mats: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    for block in model.blocks:
        for layer in (block.attn.q, block.attn.k, block.attn.v, block.attn.o,
                      block.ffn.gate, block.ffn.up, block.ffn.down):
            if type(layer) is not nn.Linear or layer.bias is not None:
                return None
            mats.append(layer.weight)
        norms += [block.attn_norm.weight, block.ffn_norm.weight]
    return mats, norms


def llama_decoder(model: LlamaModel) -> Callable[[torch.Tensor, KVCache | None], torch.Tensor]:
    """A function ``(idx, cache) → logits (B, 1, V)`` for ``model``: one-token steps with a cache run
    :func:`decode_layers`, anything else the model itself with ``last_only``. The weights are collected once
    here (generation calls this once per request; they cannot change while it runs)."""
    plan = _decode_weights(model)
    cfg = model.cfg
    step = _decode_function()
    split: list[bool] | None = None

    def logits(idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        nonlocal split
        if plan is None or cache is None or idx.shape[1] != 1 or torch.is_grad_enabled():
            return model(idx, cache, last_only=True)
        mats, norms = plan
        check_context(cfg.context_length, cache.length, 1)
        x = model.tok_emb(idx[:, 0])                                             # (B, C)
        if split is None:  # which products take the row-split kernel: decided per weight shape
            by_shape = {w.shape: x.shape[0] == 1 and use_row_split(x.new_ones(1, w.shape[1]), w)
                        for w in mats[:7]}
            split = [by_shape[w.shape] for w in mats]
        pos, half = cache.length, cfg.head_dim // 2
        cos = model.rope_cos[pos].to(x.dtype)                                    # (hd,)
        sin = model.rope_sin[pos].to(x.dtype)
        sin = torch.cat([-sin[:half], sin[half:]])   # rotate_half(x)·sin == swap_halves(x)·[-sin₁, sin₂]
        cache.reserve(pos + 1)
        x = step(x, pos, mats, split, norms, cache.k, cache.v, cos, sin, cfg.n_heads, cfg.n_kv_heads,
                 cfg.norm_eps)
        cache.length += 1
        return linear(model.final_norm(x), model.out_head)[:, None]             # (B, 1, V)

    return logits


# ------------------------------------------------------------------------------------------- dispatch
def decoder(model: nn.Module) -> Callable[[torch.Tensor, KVCache | None], torch.Tensor]:
    """The fastest function ``(idx, cache) → next-token logits (B, 1, V)`` this module has for ``model``.

    Equal to ``model(idx, cache, last_only=True)`` (held to 1e-5 by the tests); a model of another kind
    gets exactly that call.
    """
    if isinstance(model, LlamaModel):
        return llama_decoder(model)
    if isinstance(model, GPTModel):
        return lambda idx, cache: gpt_logits(model, idx, cache)
    return lambda idx, cache: model(idx, cache, last_only=True)
