"""Weight-only quantization for decoding: linear layers whose weights stay in memory as int8 or 4-bit codes.

Decoding one token multiplies one row of activations by every weight matrix, so its speed follows the bytes
of weights read per token (538 MB for SmolLM2 in fp32). Storing the weights as small integers with a few
scales cuts those bytes 4x (int8) or about 6x (4-bit), at the cost of a rounding error in every weight:

* ``int8``: per output channel absmax — row ``i`` is stored as ``round(w / s_i)`` in [-127, 127] with
  ``s_i = max|w_i| / 127`` (:func:`absmax_int8`);
* ``q4``: groups of 32 weights along a row, each stored as 4-bit codes ``0..15`` with its own scale and
  minimum, ``w ≈ code · scale + minimum`` (:func:`quantize_q4`) — the layout of llama.cpp's Q4_1.

The products run through kernels PyTorch ships for CPU, ``torch._weight_int8pack_mm`` and
``torch._weight_int4pack_mm_for_cpu``. Both are fast only with bf16 activations, so a quantized layer
rounds its input row to bf16 and returns fp32; for many rows (prefill) they lose to fp32's matrix product,
so above :data:`PACKED_MAX_ROWS` rows a layer dequantizes its weight to fp32 on the fly and uses
``F.linear``. Training (autograd on) always takes the dequantized path; the codes have no gradient.
Decoding with ``generate(fast=True)`` calls the same kernels on the same buffers from inside the compiled
one-token step of :mod:`llm_companion.inference.fast` (:func:`~llm_companion.inference.fast.layer_product`),
not through :meth:`QuantizedLinear.forward`. The measurements behind these choices are in
``benchmarks/README.md``.

:func:`quantize_model` swaps a model's linear layers (a tied output head becomes its own quantized copy;
the token embedding stays fp32 for the lookup, which reads one row per token).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = ("fp32", "int8", "q4")
Q4_GROUP = 32
# Up to this many rows the packed kernels beat dequantize + fp32 F.linear (benchmarks/README.md has the timings)
PACKED_MAX_ROWS = 32


class QuantizeError(ValueError):
    """A model or precision that :func:`quantize_model` cannot handle."""


# --------------------------------------------------------------------------------------------- by hand
def absmax_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes int8 (N, K), scales fp32 (N,))`` with ``w ≈ codes · scales[:, None]``, one scale per row.

    The rounding error of each weight is at most half a step, ``scales[i] / 2``.
    """
    w = w.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row: any scale, codes 0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 weights (N, K) back from :func:`absmax_int8`'s codes and scales."""
    return q.float() * scale[:, None]


def quantize_q4(w: torch.Tensor, group: int = Q4_GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes uint8 0..15 (N, K), scale (N, K/group), minimum (N, K/group))``: ``w ≈ code · scale + minimum``.

    Asymmetric 4-bit groups along each row (llama.cpp's Q4_1); the error is at most ``scale / 2``.
    """
    n, k = w.shape
    if k % group:
        raise QuantizeError(f"q4 needs the input width ({k}) to be a multiple of the group size {group}")
    g = w.detach().float().reshape(n, k // group, group)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = (hi - lo) / 15.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    return codes.reshape(n, k), scale, lo


def dequantize_q4(codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    """fp32 weights (N, K) back from :func:`quantize_q4`'s codes, scales and minima."""
    n, k = codes.shape
    g = codes.reshape(n, scale.shape[1], -1).float()
    return (g * scale[..., None] + minimum[..., None]).reshape(n, k)


# --------------------------------------------------------------------------------------------- layers
class QuantizedLinear(nn.Module):
    """An inference-only linear layer with quantized weights (see the module docstring for the two paths)."""

    precision = "?"

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight (N, K) these codes stand for."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized fp32 weight (N, K), for code that slices a layer's weight (GPT-2's fused q/k/v)."""
        return self.dequantize()

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for rows ``x`` (M, K) in bf16 through PyTorch's packed kernel; fp32 (M, N)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows <= PACKED_MAX_ROWS and x.device.type == "cpu" and not torch.is_grad_enabled():
            y = self._packed(x.reshape(rows, self.in_features).to(torch.bfloat16))
            if self.bias is not None:
                y = y + self.bias
            return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def weight_bytes(self) -> int:
        """Bytes one product reads: the codes and their scales (the packed kernel's copy)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(QuantizedLinear):
    """Weights as int8 codes with one fp32 scale per output channel (:func:`absmax_int8`)."""

    precision = "int8"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        q, scale = absmax_int8(linear.weight)
        self.register_buffer("qweight", q)                       # (N, K) int8
        self.register_buffer("scale", scale)                     # (N,) fp32
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16), persistent=False)

    def dequantize(self) -> torch.Tensor:
        return dequantize_int8(self.qweight, self.scale)

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x, self.qweight, self.scale_bf16).float()

    def weight_bytes(self) -> int:
        return self.qweight.numel() + 2 * self.scale_bf16.numel()


class Q4Linear(QuantizedLinear):
    """Weights as 4-bit codes in groups of 32 with a scale and minimum each (:func:`quantize_q4`).

    Keeps two copies of the codes: two per byte (N, K/2) for :meth:`dequantize`, and the packed layout of
    ``torch._weight_int4pack_mm_for_cpu`` (rows padded to a multiple of 16, as that kernel requires) with
    bf16 scales and offsets ``minimum + 8 · scale`` (the kernel computes ``(code - 8) · scale + offset``).
    """

    precision = "q4"

    def __init__(self, linear: nn.Linear, group: int = Q4_GROUP):
        super().__init__(linear)
        self.group = group
        codes, scale, minimum = quantize_q4(linear.weight, group)
        n, k = codes.shape
        self.register_buffer("codes", codes[:, 0::2] | (codes[:, 1::2] << 4))   # (N, K/2) uint8
        self.register_buffer("q_scale", scale)                                 # (N, K/group) fp32
        self.register_buffer("q_min", minimum)
        padded = -n % 16
        c = F.pad(codes.to(torch.int32), (0, 0, 0, padded))                     # (N + pad, K)
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(c, 2), persistent=False)
        sz = torch.stack([scale, minimum + 8 * scale], dim=-1)                  # (N, K/group, 2)
        sz = F.pad(sz, (0, 0, 0, 0, 0, padded)).transpose(0, 1).contiguous()    # (K/group, N + pad, 2)
        self.register_buffer("scale_zeros", sz.to(torch.bfloat16), persistent=False)

    def dequantize(self) -> torch.Tensor:
        """:func:`dequantize_q4` of the unpacked codes, written into one fp32 buffer in place (a prefill calls
        this for every layer: a quarter faster than unpacking, stacking and converting in separate tensors)."""
        n, groups = self.q_scale.shape
        w = torch.empty(n, self.codes.shape[1], 2)                             # (N, K/2, 2): low, high nibble
        torch.bitwise_and(self.codes, 15, out=w[..., 0])
        torch.bitwise_right_shift(self.codes, 4, out=w[..., 1])
        w = w.view(n, groups, -1)                                              # (N, K/group, group)
        return w.mul_(self.q_scale[..., None]).add_(self.q_min[..., None]).view(n, -1)

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int4pack_mm_for_cpu(x, self.packed, self.group, self.scale_zeros)
        return y[:, : self.out_features].float()

    def weight_bytes(self) -> int:
        return self.packed.numel() * self.packed.element_size() + 2 * self.scale_zeros.numel()


# --------------------------------------------------------------------------------------------- models
def _quantizable(module: nn.Module) -> bool:
    return type(module) is nn.Linear


def quantizes(weights: str) -> bool:
    """Whether ``weights`` (one of :data:`WEIGHTS`) asks for quantized layers: ``False`` for ``"fp32"``.

    The one place that tells fp32 from the quantized precisions; an unknown name raises :class:`QuantizeError`.
    """
    if weights not in WEIGHTS:
        raise QuantizeError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    return weights != "fp32"


def quantize_model(model: nn.Module, weights: str) -> nn.Module:
    """Replace ``model``'s linear layers in place by quantized ones (``"int8"`` or ``"q4"``); return ``model``.

    ``"fp32"`` returns the model unchanged. Works on any module built from ``nn.Linear`` layers
    (``GPTModel``, ``LlamaModel``); the output head is quantized too, untied from the token embedding
    (which stays fp32). A layer whose input width is not a multiple of 32 gets int8 under ``"q4"``.
    The result is for inference: its quantized layers have no trainable weights. Merge LoRA adapters first
    (``llm_companion.finetune.adapters.prepare_for_inference`` does), or the frozen base layers inside them
    are quantized and the adapters stay fp32.
    """
    quantized = quantizes(weights)
    if not isinstance(model, nn.Module):
        raise QuantizeError(f"quantize_model takes a torch nn.Module, got {type(model).__name__}")
    if not quantized:
        return model
    if any(isinstance(m, QuantizedLinear) for m in model.modules()):
        raise QuantizeError("the model is already quantized; load fp32 weights again to choose another precision")
    targets = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if _quantizable(child)]
    if not targets:
        raise QuantizeError(f"{type(model).__name__} has no nn.Linear layers to quantize")
    for parent, name, child in targets:
        if child.weight.device.type != "cpu":
            raise QuantizeError(f"quantized weights run on the CPU only; load the model with device='cpu' "
                                f"({name} is on {child.weight.device})")
        use_q4 = weights == "q4" and child.in_features % Q4_GROUP == 0
        setattr(parent, name, Q4Linear(child) if use_q4 else Int8Linear(child))
    model.quantized = weights   # plain attribute: which precision the linear layers hold
    return model


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights one decoding step reads: every matrix once, quantized ones as stored.

    The token embedding (a one-row lookup) is not counted; a head tied to it is, once.
    """
    total = 0
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            total += module.weight_bytes()
    counted: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue  # a lookup reads one row; a head tied to it is counted where the head owns it
        for p in module.parameters(recurse=False):
            if id(p) not in counted:
                counted.add(id(p))
                total += p.numel() * p.element_size()
    return total


def add_weights_argument(p) -> None:
    """The ``--weights {fp32,int8,q4}`` option of the CLIs that run a model."""
    p.add_argument("--weights", choices=WEIGHTS, default="fp32",
                   help="precision of the linear layers' weights in memory: fp32 (default), int8 or q4 "
                        "(faster CPU decoding, slightly different logits; chapter 8)")
