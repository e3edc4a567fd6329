"""``evaluating``: a model in eval mode for a block of code, the mode it had restored afterwards.

Generation, evaluation and the loss on a validation set all need dropout off without leaving the model in
eval mode for the training that follows; the models layer holds it so that every layer above can use it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (no dropout) for the block, then restore the mode it had.

    Only the mode: gradients are the caller's choice (``torch.no_grad()``/``inference_mode()``).
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
