"""Next-token cross-entropy on batches and loaders, and perplexity.

A language model is trained to put high probability on the token that actually comes next. For logits
(B, T, V) and targets (B, T) the loss is the mean of ``-log softmax(logits)[target]`` over all positions;
targets equal to ``-100`` are ignored (chapter 7 masks prompt and padding tokens that way).
:func:`evaluate` averages any loss over a loader in eval mode; the training loop
(:mod:`llm_companion.training.loop`) builds on this module, never the other way round.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llm_companion.models.eval_mode import evaluating
from llm_companion.precision import use_bf16
from llm_companion.training import distributed

IGNORE_INDEX = -100


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``model`` predicting ``target_batch`` (B, T) from ``input_batch`` (B, T).

    The batch is moved to ``device`` (default: the model's device), so a CPU DataLoader feeds a GPU model.
    """
    if device is None:
        device = next(model.parameters()).device
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)                                                # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), target_batch.flatten(), ignore_index=IGNORE_INDEX)


def calc_loss_loader(loader, model: nn.Module, num_batches: int | None = None,
                     device: torch.device | str | None = None) -> float:
    """Average of :func:`calc_loss_batch` over the first ``num_batches`` batches (all when None), in eval mode.

    Returns ``nan`` for an empty loader, so an empty validation split shows up instead of crashing.
    Each batch counts equally (as in the reference book), not each token. Chapter 4's name for
    :func:`evaluate` with its default loss, which does the work.
    """
    return evaluate(model, loader, num_batches=num_batches, device=device)


def default_loss(model: nn.Module, batch) -> torch.Tensor:
    """Next-token cross-entropy on an ``(input, target)`` batch."""
    inp, tgt = batch[0], batch[1]
    return calc_loss_batch(inp, tgt, model)


def to_device(batch, device: torch.device):
    """Move every tensor in a (nested) tuple/list/dict batch to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch



@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn: Callable | None = None, num_batches: int | None = None, *,
             device: torch.device | str | None = None, bf16: bool = False) -> float:
    """Mean ``loss_fn`` over the first ``num_batches`` batches of ``loader`` in eval mode (nan if empty).

    Under torch.distributed the result is averaged over all processes.
    """
    loss_fn = loss_fn or default_loss
    device = torch.device(device) if device is not None else next(model.parameters()).device
    bf16 = use_bf16(bf16, device, verbose=False)  # never emulated (llm_companion.precision)
    total, n = 0.0, 0
    with evaluating(model):
        for i, batch in enumerate(loader):
            if num_batches is not None and i >= num_batches:
                break
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                total += float(loss_fn(model, to_device(batch, device)))
            n += 1
    mean = total / n if n else float("nan")
    return distributed.all_reduce_mean(mean)


def perplexity(loss: float | torch.Tensor) -> float:
    """``exp(loss)``: the effective number of tokens the model hesitates between at each step."""
    if torch.is_tensor(loss):
        loss = loss.detach()
    return math.exp(float(loss))
