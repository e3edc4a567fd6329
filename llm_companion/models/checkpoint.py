"""Checkpoints that survive a crash: written atomically, verified on load, loaded safely.

A checkpoint is one directory ``step-00000120/`` holding

* ``model.safetensors`` — the weights, named as in ``model.state_dict()`` (a tied output head is stored
  once, as ``tok_emb.weight``);
* ``optimizer.pt`` — ``optimizer.state_dict()`` (and a scheduler's, if any), read back with
  ``torch.load(weights_only=True)`` so loading never unpickles arbitrary objects;
* ``state.json`` — everything else: step, data position, RNG states, history, the model config;
* ``SHA256SUMS`` — the hash of each file above, checked before anything is loaded.

The directory is assembled under a temporary name and renamed into place, so a process killed at any moment
leaves either the previous checkpoint or the new one, never a half-written one. :func:`save_model` and
:func:`load_model` are the weights-only variant (``model.safetensors`` + ``config.json``) used for
finished models such as the stand-in.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from llm_companion.atomic import atomic_dir, file_mode, fsync_dir
from llm_companion.data.download import sha256_of
from llm_companion.models.config import GPTConfig
from llm_companion.models.gpt import GPTModel

SUMS = "SHA256SUMS"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, truncated, corrupted)."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint whose tensors do not fit the model it is loaded into."""


# ---------------------------------------------------------------------------------------------- files
def seal(tmp_dir: Path) -> None:
    """Write SHA256SUMS for every file in ``tmp_dir``, give them the usual permissions, flush to disk.

    The last step before :func:`~llm_companion.atomic.publish_dir` for any folder :func:`verify_dir` will read
    (checkpoints, saved models, a published stand-in)."""
    sums = []
    for f in sorted(tmp_dir.iterdir()):
        if f.is_file() and f.name != SUMS:
            os.chmod(f, file_mode())
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            sums.append(f"{sha256_of(f)}  {f.name}\n")
    (tmp_dir / SUMS).write_text("".join(sums))
    os.chmod(tmp_dir / SUMS, file_mode())
    fsync_dir(tmp_dir)


def verify_dir(path: Path) -> None:
    """Check every file listed in ``path/SHA256SUMS``; raise :class:`CheckpointError` naming a bad file."""
    path = Path(path)
    sums = path / SUMS
    if not sums.is_file():
        raise CheckpointError(f"{sums} is missing: {path} is incomplete; delete it and save again")
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing; the checkpoint is incomplete, delete {path}")
        if sha256_of(f) != digest:
            raise CheckpointError(f"{f} is truncated or corrupted (sha256 mismatch); delete {path} "
                                  f"and resume from an earlier checkpoint")


# --------------------------------------------------------------------------------------------- tensors
def check_compatible(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Raise :class:`CheckpointMismatch` naming the first tensor whose name or shape differs."""
    own = model.state_dict()
    for name, t in own.items():
        if name not in tensors:
            if name == "out_head.weight" and "tok_emb.weight" in tensors:  # tied: stored once
                continue
            raise CheckpointMismatch(f"{source} has no tensor {name!r} (model shape {tuple(t.shape)}); "
                                     f"it was saved from a different model configuration")
        if tensors[name].shape != t.shape:
            raise CheckpointMismatch(
                f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)} in the checkpoint but "
                f"{tuple(t.shape)} in the model; build the model with the checkpoint's config")
    extra = sorted(set(tensors) - set(own))
    if extra:
        raise CheckpointMismatch(f"{source} has tensor {extra[0]!r} (shape {tuple(tensors[extra[0]].shape)}) "
                                 f"that the model lacks; build the model with the checkpoint's config")


def save_weights(model: nn.Module, file: str | os.PathLike) -> None:
    """Write ``model.state_dict()`` to a safetensors file; a tied output head is stored once."""
    sd = model.state_dict()
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "tie_weights", False):
        sd.pop("out_head.weight", None)
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(file))


def _load_weights(model: nn.Module, file: Path) -> None:
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} cannot be read ({e}); it is truncated or corrupted") from None
    check_compatible(model, tensors, file)
    # load_state_dict copies in place: tied parameters stay tied; strict=False only for the tied copy
    missing, _ = model.load_state_dict(tensors, strict=False)
    assert set(missing) <= {"out_head.weight"}, missing


def save_model(model: nn.Module, directory: str | os.PathLike, *, extra: dict[str, dict] | None = None) -> Path:
    """Save weights (``model.safetensors``) and ``config.json`` (+ any ``extra`` JSON files) atomically."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_weights(model, tmp / "model.safetensors")
        cfg = getattr(model, "cfg", None)
        if isinstance(cfg, GPTConfig):
            (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        for name, obj in (extra or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True))
        seal(tmp)
    return directory


def load_model(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a :class:`~llm_companion.models.gpt.GPTModel` from a :func:`save_model` directory (verified)."""
    directory = Path(directory)
    verify_dir(directory)
    cfg = GPTConfig.from_dict(json.loads((directory / "config.json").read_text()))
    model = GPTModel(cfg)
    _load_weights(model, directory / "model.safetensors")
    return model.to(device)


# ------------------------------------------------------------------------------------------ RNG states
def capture_rng() -> dict[str, Any]:
    """The state of every random number generator training touches, as JSON-friendly values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def generator_state(gen: torch.Generator | None) -> list[int] | None:
    return None if gen is None else gen.get_state().tolist()


def set_generator_state(gen: torch.Generator | None, state: list[int] | None) -> None:
    if gen is not None and state is not None:
        gen.set_state(torch.tensor(state, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(directory: str | os.PathLike, *, model: nn.Module, optimizer=None, scheduler=None,
                    state: dict[str, Any] | None = None, step: int = 0, keep: int | None = 2) -> Path:
    """Write ``directory/step-{step:08d}/`` atomically and return it; keep only the newest ``keep``.

    ``state`` is any JSON-serialisable dict (the training loop stores step, data position, RNG states and
    its history there); it comes back from :func:`load_checkpoint`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    with atomic_dir(final) as tmp:
        save_weights(model, tmp / "model.safetensors")
        opt = {}
        if optimizer is not None:
            opt["optimizer"] = optimizer.state_dict()
        if scheduler is not None:
            opt["scheduler"] = scheduler.state_dict()
        torch.save(opt, tmp / "optimizer.pt")
        cfg = getattr(model, "cfg", None)
        meta = {"step": step, "config": cfg.to_dict() if isinstance(cfg, GPTConfig) else None,
                "state": state or {}}
        (tmp / "state.json").write_text(json.dumps(meta))
        seal(tmp)
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Published checkpoint directories under ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint under ``directory`` (None when there is none)."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer=None, scheduler=None,
                    map_location: str | torch.device | None = None) -> dict[str, Any]:
    """Verify and load a checkpoint into ``model`` (and ``optimizer``/``scheduler``); return its state dict.

    ``path`` is a ``step-*`` directory or a run directory (its newest checkpoint is used).
    Raises :class:`CheckpointError` naming a truncated/corrupted file, and :class:`CheckpointMismatch`
    naming the first tensor whose shape differs from the model's.
    """
    path = Path(path)
    if not _STEP_DIR.match(path.name):
        newest = latest_checkpoint(path)
        if newest is None:
            raise CheckpointError(f"no checkpoint (step-* directory) found in {path}")
        path = newest
    verify_dir(path)
    _load_weights(model, path / "model.safetensors")
    try:
        opt = torch.load(path / "optimizer.pt", map_location=map_location or "cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a damaged zip
        raise CheckpointError(f"{path / 'optimizer.pt'} cannot be read ({e}); it is corrupted") from None
    if optimizer is not None:
        if "optimizer" not in opt:
            raise CheckpointError(f"{path / 'optimizer.pt'} holds no optimizer state; resume without one")
        optimizer.load_state_dict(opt["optimizer"])
    if scheduler is not None and "scheduler" in opt:
        scheduler.load_state_dict(opt["scheduler"])
    meta = json.loads((path / "state.json").read_text())
    return meta["state"] | {"step": meta["step"], "config": meta["config"], "path": str(path)}
