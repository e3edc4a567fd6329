"""Next-token cross-entropy on batches and loaders, and perplexity.

A language model is trained to put high probability on the token that actually comes next. For logits
(B, T, V) and targets (B, T) the loss is the mean of ``-log softmax(logits)[target]`` over all positions;
targets equal to ``-100`` are ignored (chapter 7 masks prompt and padding tokens that way).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
    Each batch counts equally (as in the reference book), not each token. Chapter 4's name for the
    training loop's :func:`~llm_companion.training.evaluate` with its default loss, which does the work.
    """
    from .training import evaluate  # training builds on this module; import at call time

    return evaluate(model, loader, num_batches=num_batches, device=device)


def perplexity(loss: float | torch.Tensor) -> float:
    """``exp(loss)``: the effective number of tokens the model hesitates between at each step."""
    if torch.is_tensor(loss):
        loss = loss.detach()
    return math.exp(float(loss))
