"""The one speed mechanism of decoding: a one-token step as one compiled function, for every weight format.

The model modules (:mod:`~llm_companion.models.gpt`, :mod:`~llm_companion.models.llama`) are written to be read.
:func:`decoder` returns the function :func:`~llm_companion.inference.generation.generate` calls with
``fast=True``: a prompt (several tokens) runs the model itself with ``last_only``; a one-token step with a KV
cache runs :func:`decode_step`, the same arithmetic as the blocks, head included, written as one function of
tensors that ``torch.jit.script`` compiles once per process (under a second; no C++ compiler needed). A step
is ~400-600 small ops, and launching them one by one from Python costs more than many of them compute.

Every linear layer enters the step in its stored form (:func:`layer_product`): an fp32 (or bf16) weight, or
the int8 / 4-bit codes of :mod:`~llm_companion.inference.quantize` with their scales, so quantized models
decode through the same step, their packed kernels called from inside it. One fp32 row is multiplied by
:func:`row_split_product` (the weight's two halves in one ``bmm``), a fixed choice measured in
``benchmarks/README.md``, never timed at run time. The tests hold the step to the model's own forward.
``torch.compile`` of the plain model was measured as the alternative (gpt-fast's way): ``benchmarks/README.md``
says why it is not used (minutes of compilation, a C++ compiler, and a slower step with this KV cache).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llm_companion.inference.quantize import Q4_GROUP, Int8Linear, Q4Linear
from llm_companion.models.gpt import GPTModel
from llm_companion.models.kv_cache import KVCache, check_context
from llm_companion.models.llama import LlamaModel

DENSE, INT8, Q4 = 0, 1, 2   # how a layer's weight is stored (the `kinds` of decode_step)


# ------------------------------------------------------------------------------------------- products
def row_split_product(row: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``row @ weight.T`` for one row (1, n_in) → (1, n_out), as one ``bmm`` over the two halves of
    ``weight``'s rows (views, no copy). MKL's one-row ``F.linear`` streams an fp32 weight about half as fast
    on the CPUs measured (``benchmarks/README.md``)."""
    n_out, n_in = weight.shape[0], weight.shape[1]
    half = n_out // 2
    # (2, n_in, 1) as the transpose of a row: with this (column-major) stride the CPU BLAS takes its fast path
    v = row.reshape(1, n_in).t().expand(2, n_in, 1)
    y = torch.bmm(weight[: 2 * half].view(2, half, n_in), v).reshape(1, 2 * half)   # (1, 2·half)
    if n_out % 2:  # an odd row count (GPT-2's 50,257-token head): the last row on its own
        y = torch.cat([y, torch.mm(row.reshape(1, n_in), weight[-1:].t())], dim=1)
    return y


def product(x: torch.Tensor, kind: int, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor,
            n_out: int) -> torch.Tensor:
    """``x @ W.T + bias`` for rows ``x`` (B, n_in) → (B, n_out), with ``W`` stored as ``kind`` says:
    ``DENSE``: ``a`` is W; ``INT8``: ``a`` the codes, ``b`` the bf16 scales; ``Q4``: ``a`` the packed codes,
    ``b`` the bf16 scales and offsets. ``bias`` is empty when the layer has none."""
    # kinds as literals: TorchScript cannot read module globals (DENSE, INT8, Q4 == 0, 1, 2)
    if kind == 1:   # PyTorch's packed kernels are fast with bf16 activations (quantize.py says why)
        y = torch._weight_int8pack_mm(x.to(torch.bfloat16), a, b).to(x.dtype)
    elif kind == 2:
        y = torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), a, 32, b)[:, :n_out].to(x.dtype)
    elif x.shape[0] == 1 and x.dtype == torch.float32 and a.is_contiguous():
        y = row_split_product(x, a)
    else:
        y = torch.mm(x, a.t())
    if bias.numel() > 0:
        y = y + bias
    return y


def layer_product(layer: nn.Module) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, int] | None:
    """``(kind, a, b, bias, n_out)`` of :func:`product` for ``layer``, or ``None`` for a layer the step cannot
    read (a LoRA adapter, another subclass): such a model decodes through its own modules."""
    none = torch.empty(0)
    if type(layer) is nn.Linear:
        return DENSE, layer.weight, none, none if layer.bias is None else layer.bias, layer.out_features
    bias = none if getattr(layer, "bias", None) is None else layer.bias
    if type(layer) is Int8Linear:
        return INT8, layer.qweight, layer.scale_bf16, bias, layer.out_features
    if type(layer) is Q4Linear and layer.group == Q4_GROUP:
        return Q4, layer.packed, layer.scale_zeros, bias, layer.out_features
    return None


# ----------------------------------------------------------------------------------------------- step
def _norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm when ``bias`` is given (GPT), else RMSNorm with the arithmetic of the model's ``RMSNorm``."""
    if bias.numel() > 0:
        return F.layer_norm(x, [x.shape[-1]], weight, bias, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _attention(x: torch.Tensor, h: torch.Tensor, i: int, s: int, pos: int, fused: bool, kinds: list[int],
               a: list[torch.Tensor], b: list[torch.Tensor], bias: list[torch.Tensor], n_out: list[int],
               cache_k: torch.Tensor, cache_v: torch.Tensor, rotation: torch.Tensor,
               n_heads: int, n_kv_heads: int, head_dim: int) -> torch.Tensor:
    """``x + Attn(h)`` of layer ``i`` for one position ``pos``; its products start at slot ``s``."""
    B, C, hd, kv = x.shape[0], x.shape[1], head_dim, n_kv_heads
    if fused:   # GPT: one q/k/v product
        qkv = product(h, kinds[s], a[s], b[s], bias[s], n_out[s])
        q, k, v = qkv[:, :n_heads * hd], qkv[:, n_heads * hd:(n_heads + kv) * hd], qkv[:, (n_heads + kv) * hd:]
        s += 1
    else:       # Llama: three
        q = product(h, kinds[s], a[s], b[s], bias[s], n_out[s])
        k = product(h, kinds[s + 1], a[s + 1], b[s + 1], bias[s + 1], n_out[s + 1])
        v = product(h, kinds[s + 2], a[s + 2], b[s + 2], bias[s + 2], n_out[s + 2])
        s += 3
    if rotation.numel() > 0:   # RoPE for one position: one small product per head with its rotation matrix
        q = torch.mm(q.reshape(B * n_heads, hd), rotation)
        k = torch.mm(k.reshape(B * kv, hd), rotation)
    cache_k[i, :, :, pos] = k.reshape(B, kv, hd)
    cache_v[i, :, :, pos] = v.reshape(B, kv, hd)
    # each group's query heads against their shared key/value head: (B, KV, group, hd)
    out = F.scaled_dot_product_attention(q.reshape(B, kv, n_heads // kv, hd), cache_k[i, :, :, : pos + 1],
                                         cache_v[i, :, :, : pos + 1])
    return x + product(out.reshape(B, C), kinds[s], a[s], b[s], bias[s], n_out[s])


def decode_step(x: torch.Tensor, pos: int, kinds: list[int], a: list[torch.Tensor], b: list[torch.Tensor],
                bias: list[torch.Tensor], n_out: list[int], norms: list[torch.Tensor],
                norm_biases: list[torch.Tensor], cache_k: torch.Tensor, cache_v: torch.Tensor,
                rotation: torch.Tensor, n_heads: int, n_kv_heads: int, head_dim: int, eps: float,
                gated: bool) -> torch.Tensor:
    """Every block, the final norm and the head of a one-token step; returns the logits (B, V).

    ``x`` (B, C) is the new token's input vector at position ``pos``. Each block's products occupy
    consecutive slots of ``kinds``/``a``/``b``/``bias``/``n_out`` (:func:`product`): GPT (``gated=False``)
    q/k/v fused, o, fc, proj; Llama q, k, v, o, gate, up, down; the head is the last slot. ``norms`` and
    ``norm_biases`` hold two per block and the final one (biases empty for RMSNorm). ``cache_k``/``cache_v``
    (L, B, KV, capacity, hd) receive the new keys and values in place. ``rotation`` (hd, hd) is RoPE at
    ``pos`` as a matrix, empty for GPT. Written with type annotations and no Python objects so that
    TorchScript can compile it; it is also correct as plain Python.
    """
    per = 7 if gated else 4
    for i in range(cache_k.shape[0]):
        s = per * i
        h = _norm(x, norms[2 * i], norm_biases[2 * i], eps)
        x = _attention(x, h, i, s, pos, not gated, kinds, a, b, bias, n_out, cache_k, cache_v, rotation,
                       n_heads, n_kv_heads, head_dim)
        s += 4 if gated else 2
        h = _norm(x, norms[2 * i + 1], norm_biases[2 * i + 1], eps)
        if gated:   # SwiGLU
            h = F.silu(product(h, kinds[s], a[s], b[s], bias[s], n_out[s])) * product(
                h, kinds[s + 1], a[s + 1], b[s + 1], bias[s + 1], n_out[s + 1])
            s += 2
        else:       # GPT-2's MLP
            h = F.gelu(product(h, kinds[s], a[s], b[s], bias[s], n_out[s]), approximate="tanh")
            s += 1
        x = x + product(h, kinds[s], a[s], b[s], bias[s], n_out[s])
    h = _norm(x, norms[-1], norm_biases[-1], eps)
    s = len(kinds) - 1
    return product(h, kinds[s], a[s], b[s], bias[s], n_out[s])


_compiled: list = []  # [decode_step as TorchScript, or the Python function where scripting fails]


def step_function():
    """:func:`decode_step`, compiled by ``torch.jit.script`` once per process (under a second).

    Where scripting fails (it needs the ``.py`` source), the Python function runs, with the same results,
    and a one-line warning says so.
    """
    if not _compiled:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript is in maintenance mode and may say so
                _compiled.append(torch.jit.script(decode_step))
        except Exception as e:  # noqa: BLE001 - any failure to compile means: run the Python function
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            warnings.warn(f"decoding runs uncompiled (slower): TorchScript failed: {first}", stacklevel=2)
            _compiled.append(decode_step)
    return _compiled[0]


# ------------------------------------------------------------------------------------------- the plan
def _layers(model: GPTModel | LlamaModel) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(linear layers in slot order, norms in order)`` of a GPT or Llama model (:func:`decode_step`'s order)."""
    layers: list[nn.Module] = []
    norms: list[nn.Module] = []
    for block in model.blocks:
        if isinstance(model, LlamaModel):
            attn, ffn = block.attn, block.ffn
            layers += [attn.q, attn.k, attn.v, attn.o, ffn.gate, ffn.up, ffn.down]
            norms += [block.attn_norm, block.ffn_norm]
        else:
            layers += [block.attn.qkv, block.attn.proj, block.ff.fc, block.ff.proj]
            norms += [block.norm1, block.norm2]
    return layers + [model.out_head], norms + [model.final_norm]


def decode_plan(model: nn.Module) -> dict | None:
    """The tensors :func:`decode_step` reads for ``model``, collected once, or ``None`` where a layer is not
    one the step can read (:func:`layer_product`): that model decodes through its own modules."""
    if not isinstance(model, (GPTModel, LlamaModel)):
        return None
    layers, norms = _layers(model)
    slots = [layer_product(layer) for layer in layers]
    if any(slot is None for slot in slots):
        return None
    kinds, a, b, bias, n_out = (list(column) for column in zip(*slots))
    none = torch.empty(0)
    norm_biases = [none if getattr(n, "bias", None) is None else n.bias for n in norms]
    eps = model.cfg.norm_eps if isinstance(model, LlamaModel) else model.cfg.ln_eps
    return dict(kinds=kinds, a=a, b=b, bias=bias, n_out=n_out, norms=[n.weight for n in norms],
                norm_biases=norm_biases, eps=eps)


def _rotation(model: LlamaModel, pos: int, dtype: torch.dtype) -> torch.Tensor:
    """RoPE at position ``pos`` as an (hd, hd) matrix: ``x @ R == x·cos + rotate_half(x)·sin`` (one product
    per head instead of five elementwise ops)."""
    hd = model.cfg.head_dim
    half = hd // 2
    cos, sin = model.rope_cos[pos].to(dtype), model.rope_sin[pos].to(dtype)                  # (hd,)
    sin = torch.cat([-sin[:half], sin[half:]])   # rotate_half(x)·sin == swap_halves(x)·[-sin₁, sin₂]
    rotation = torch.diag(cos)
    dims = torch.arange(hd, device=cos.device)
    rotation[(dims + half) % hd, dims] = sin   # dimension d takes its partner d ± hd/2
    return rotation


def decoder(model: nn.Module) -> Callable[[torch.Tensor, KVCache | None], torch.Tensor]:
    """A function ``(idx, cache) → next-token logits (B, 1, V)`` equal to ``model(idx, cache, last_only=True)``
    (held to 1e-5 by the tests): one-token steps with a cache run :func:`decode_step`, anything else (a
    prompt, no cache, autograd on, a model the step cannot read) the model itself. The weights are collected
    once here (generation calls this once per request; they cannot change while it runs)."""
    plan = decode_plan(model)
    step = step_function() if plan is not None else None
    cfg = model.cfg
    llama = isinstance(model, LlamaModel)

    def logits(idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        if plan is None or cache is None or idx.shape[1] != 1 or torch.is_grad_enabled():
            return model(idx, cache, last_only=True)
        pos = cache.length
        check_context(cfg.context_length, pos, 1)
        x = model.tok_emb(idx[:, 0])                                            # (B, C)
        if llama:
            rotation = _rotation(model, pos, x.dtype)
        else:
            x, rotation = x + model.pos_emb.weight[pos], torch.empty(0)
        cache.reserve(pos + 1)
        out = step(x, pos, plan["kinds"], plan["a"], plan["b"], plan["bias"], plan["n_out"], plan["norms"],
                   plan["norm_biases"], cache.k, cache.v, rotation, cfg.n_heads,
                   getattr(cfg, "n_kv_heads", cfg.n_heads), cfg.head_dim, plan["eps"], llama)
        cache.length += 1
        return out[:, None]                                                     # (B, 1, V)

    return logits
