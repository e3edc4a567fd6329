"""A faster matrix-vector product for CPU decoding, as a drop-in ``nn.Linear``.

Decoding one token multiplies a single row of activations by every weight matrix: the work is streaming the
weights from memory. For one row, PyTorch's CPU matmul streams a weight on one core (measured here: the same
~20 GB/s with 1 or 2 threads). Splitting the weight's rows into two halves and multiplying both halves in one
``bmm`` gives each core half to stream: about 40 GB/s on the book's 2-core machine, without copying any weight
(the halves are views).

:class:`RowSplitLinear` is an ``nn.Linear`` (same parameters, same state-dict keys, same results) whose
``forward`` takes that path when it pays and ``F.linear`` otherwise, so the model code that uses it reads
``self.qkv(x)`` like any other layer. :func:`row_split_linear` is the kernel itself.

Whether the split pays depends on the CPU and its BLAS: on the authors' VM it doubled decoding speed one week
and was 2-4x *slower* on the next host of the same VM type, where one-row ``F.linear`` already used both
cores. So the choice is measured, not assumed: the first eligible call for each weight shape times both paths
on that weight (a few milliseconds, once per process) and keeps the faster one. ``LLM_COMPANION_ROW_SPLIT=1``
or ``=0`` forces the kernel on or off (for tests and benchmarks).
"""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch import nn


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

    Only for one row of fp32 on a CPU with two or more threads and autograd off: batches of rows already
    use every core, training needs the plain op's backward, and bf16 has its own fast one-row path
    (measured: the split is slower there). Where it may pay, the answer is measured once per weight shape
    (see the module's docstring) unless ``LLM_COMPANION_ROW_SPLIT`` forces it.
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


class RowSplitLinear(nn.Linear):
    """``nn.Linear`` that multiplies a single decoding row by the row-split kernel on a multi-core CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_row_split(x, self.weight):
            return row_split_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``layer(x)``, through the row-split kernel when ``layer`` is a plain ``nn.Linear`` and it pays.

    For models built from plain ``nn.Linear`` layers; a model built from :class:`RowSplitLinear` just calls
    its layers. Wrapped layers (LoRA adapters, other subclasses) run their own ``forward``.
    """
    if type(layer) is nn.Linear:  # called directly: a decoding step makes hundreds of these calls
        weight, bias = layer.weight, layer.bias   # (each module attribute is a dictionary lookup)
        if use_row_split(x, weight):
            return row_split_linear(x, weight, bias)
        return F.linear(x, weight, bias)
    return layer(x)
