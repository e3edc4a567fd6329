"""Where a training run is, saved with each checkpoint so that a resumed run continues exactly where it stopped.

A checkpoint's weights and optimizer are :mod:`llm_companion.models.checkpoint`'s business; this module adds
the rest of the run's state to its ``state.json``: the :class:`Position` (step, epoch, batch within the epoch,
inputs seen, time spent) and the random states that decide what comes next, the global generators (dropout
masks, samples) and the DataLoader's own (the shuffle). :func:`~llm_companion.training.loop.train` makes two
calls, :func:`restore` at the start and :func:`capture` at each checkpoint, and takes each epoch's batches from
:func:`epoch_batches`, which replays a position in the middle of an epoch.

Why a replay: a DataLoader draws its epoch's order from the random state when its iterator starts, and that
state is long gone by the time a checkpoint is taken mid-epoch. So each epoch records the state it started
from (``epoch_order``); a resumed run restores it, draws the same order, skips the batches the interrupted run
consumed, then restores the state the checkpoint was taken in. On CPU the resumed run ends with bit-identical
weights to an uninterrupted one (tests/test_training.py kills a run with SIGKILL to prove it).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_companion.models.checkpoint import (
    capture_rng,
    generator_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    set_generator_state,
)


@dataclass
class Position:
    """Where a run is: the counters a checkpoint stores besides weights, optimizer and random states."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    examples: int = 0
    elapsed0: float = 0.0  # seconds spent before this process took over (resumed runs add to it)


def restore(checkpoint_dir: str | Path | None, model: nn.Module, optimizer,
            device) -> tuple[Position, dict[str, Any] | None]:
    """Load the newest checkpoint in ``checkpoint_dir`` (if any) into ``model`` and ``optimizer``.

    Returns the position to continue from and the checkpoint's state (its ``"history"`` is a
    ``History.to_dict()``), or a fresh position and None when there is nothing to resume.
    """
    ckpt = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is None:
        return Position(), None
    s = load_checkpoint(ckpt, model=model, optimizer=optimizer, map_location=device)
    pos = Position(step=s["step"], epoch=s["epoch"], batch_in_epoch=s["batch"], tokens=s["tokens_seen"],
                   examples=s["examples_seen"], elapsed0=s["elapsed"])
    return pos, s


def epoch_batches(loader, saved: dict[str, Any] | None, batch_in_epoch: int) -> tuple[Iterator, dict[str, Any]]:
    """An iterator over this epoch's (remaining) batches, and the random state its order was drawn from.

    ``saved`` is the checkpoint state from :func:`restore` for the first epoch of a resumed run, else None.
    A fresh epoch records the state and starts the loader. A run resumed mid-epoch replays the epoch's start
    from the recorded state (the same shuffle), skips the ``batch_in_epoch`` batches the checkpointed run
    consumed, and continues with the random state it had when it saved, so the remaining batches, dropout
    masks and all, are the ones the uninterrupted run would have seen.
    """
    if saved is not None and batch_in_epoch > 0:
        epoch_order = saved["epoch_order"]
        _restore_order_state(loader, epoch_order)
        it = iter(loader)
        for _ in range(batch_in_epoch):
            next(it)
        _restore_order_state(loader, saved["order"])
        return it, epoch_order
    if saved is not None:  # checkpoint taken at an epoch's start (written by an older version of this module)
        _restore_order_state(loader, saved["order"])
    epoch_order = _order_state(loader)
    return iter(loader), epoch_order


def capture(pos: Position, loader, epoch_order: dict[str, Any], *, elapsed: float, history: dict[str, Any],
            train_config: dict[str, Any]) -> dict[str, Any]:
    """The JSON ``state`` a checkpoint stores: position in the data, random states, history, settings.

    Call it last at a step, after everything that draws random numbers there (a sample, an evaluation that
    iterates the training loader): the state it records is the one the next batch starts from.

    A checkpoint after an epoch's last batch is stored as that epoch's end, not as the next epoch's start:
    the loader's iterator has not run out yet, and running out draws from a loader's own generator (a
    ``RandomSampler`` draws one more permutation), so a resumed run replays the epoch to draw it too.
    """
    return {
        "epoch": pos.epoch, "batch": pos.batch_in_epoch, "tokens_seen": pos.tokens, "examples_seen": pos.examples,
        "elapsed": elapsed, "history": history, "order": _order_state(loader),
        "epoch_order": epoch_order, "train_config": train_config,
    }


def _loader_generators(loader) -> list[torch.Generator]:
    """The generators that decide a DataLoader's order (its own and its sampler's), each once."""
    found: dict[int, torch.Generator] = {}
    for obj in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None),
                                                                     "sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator):
            found.setdefault(id(g), g)
    return list(found.values())


def _order_state(loader) -> dict[str, Any]:
    return {"rng": capture_rng(), "gens": [generator_state(g) for g in _loader_generators(loader)]}


def _restore_order_state(loader, state: dict[str, Any]) -> None:
    restore_rng(state["rng"])
    for g, s in zip(_loader_generators(loader), state["gens"]):
        set_generator_state(g, s)
