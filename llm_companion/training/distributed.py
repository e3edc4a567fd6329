"""Data-parallel training with PyTorch's standard engine (DistributedDataParallel).

Launch any script that calls :func:`setup` (``llm-companion pretrain`` and ``python -m llm_companion.cli
pretrain`` do) with ``torchrun --nproc_per_node=N``. Each process holds a full copy of the
model, reads a different shard of every batch (:func:`shard_sampler` wraps ``DistributedSampler``), and
DDP averages the gradients during ``backward()``, so N processes with per-process batch B take the same
steps as one process with batch N·B. Only rank 0 writes checkpoints and prints.

Without torchrun (no ``WORLD_SIZE`` in the environment) every helper here is a cheap no-op, so the same code
runs single-process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from llm_companion.profiles import default_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and when not distributed): the one process that writes and prints."""
    return rank() == 0


def setup(backend: str | None = None, device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (``nccl`` on CUDA, ``gloo`` on CPU) and pick the device.

    Without ``WORLD_SIZE`` > 1 it returns a single-process DistInfo on ``device`` (default: the best
    available device).
    """
    n = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device or default_device())
    if n <= 1:
        return DistInfo(0, 0, 1, dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not is_distributed():
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"))
    return DistInfo(dist.get_rank(), local, dist.get_world_size(), dev)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap_model(model: nn.Module) -> nn.Module:
    """``DistributedDataParallel(model)`` on the model's device (the model stays reachable as ``.module``)."""
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_mean(value: float) -> float:
    """Average a Python float over all processes (identity when not distributed)."""
    if not is_distributed():
        return value
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / world_size()


def all_reduce_mean_tensor(t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over all processes (returned unchanged when not distributed)."""
    if not is_distributed():
        return t
    if dist.get_backend() != "nccl":
        t = t.cpu()
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / world_size()


def shard_sampler(dataset, *, shuffle: bool, seed: int = 0, drop_last: bool = False):
    """A ``DistributedSampler`` giving this process its shard (the whole dataset when not distributed).

    Pass it as ``DataLoader(dataset, batch_size=per_process_batch, sampler=sampler)``. Every process
    shuffles the same way (``seed`` + epoch, see :func:`set_sampler_epoch`) and rank r reads items
    r, r+N, r+2N, … of that order, so step k of N processes with batch B/N covers exactly the items of
    step k of one process with batch B.
    """
    return torch.utils.data.DistributedSampler(dataset, num_replicas=world_size(), rank=rank(),
                                               shuffle=shuffle, seed=seed, drop_last=drop_last)


def set_sampler_epoch(loader, epoch: int) -> None:
    """Tell a ``DistributedSampler`` which epoch starts, so each epoch gets its own shuffle."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
