"""A LoRA adapter as a folder: ``adapter.safetensors`` (the trained matrices) + ``adapter.json`` (what made it).

:func:`save_adapter` writes both into a temporary sibling folder and renames it into place, so a reader sees
the old adapter or the complete new one, never half of one. :func:`load_adapter` applies LoRA to a base model
with the stored rank, alpha and layers and loads the weights; an adapter made for another model shape raises
:class:`~llm_companion.finetune.lora.LoRAError` with a one-line message.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from llm_companion.finetune.lora import (
    LoRAError,
    LoRALinear,
    load_lora,
    lora_layers,
    merge_lora,
    read_lora_metadata,
    save_lora,
)
from llm_companion.inference.quantize import quantize_model

WEIGHTS, META = "adapter.safetensors", "adapter.json"


def save_adapter(model: nn.Module, directory: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``model``'s LoRA adapters and ``meta`` (base model, method, data, steps, …) to ``directory``.

    ``adapter.json`` also records rank, alpha and targets from the model. Atomic: an existing adapter
    folder is replaced whole. Returns the folder.
    """
    layers = lora_layers(model)
    if not layers:
        raise LoRAError("the model has no LoRA adapters to save; apply_lora() adds them")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "lora_config", None) or {}
    first = next(iter(layers.values()))
    info = {**meta, "rank": first.rank, "alpha": first.alpha, "targets": config.get("targets"),
            "layers": len(layers), "format": "llm_companion.adapter/1"}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        save_lora(model, tmp / WEIGHTS)
        (tmp / META).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_adapter_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``adapter.json`` of an adapter folder (one-line :class:`LoRAError` when it is not one)."""
    directory = Path(directory)
    path = directory / META
    if not path.is_file() or not (directory / WEIGHTS).is_file():
        raise LoRAError(f"{directory} is not an adapter folder (needs {META} and {WEIGHTS}); "
                        f"write one with `llm-companion finetune --out DIR`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LoRAError(f"{path} is not valid JSON ({e}); write the adapter again") from None


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Apply the adapter in ``directory`` to the base ``model`` (in place) and return it.

    Raises :class:`LoRAError` (one line) when the folder is not an adapter or was made for another shape.
    """
    directory = Path(directory)
    meta = read_adapter_meta(directory)
    read_lora_metadata(directory / WEIGHTS)
    try:
        load_lora(model, directory / WEIGHTS)
    except LoRAError as e:
        base = meta.get("base_model", "another model")
        raise LoRAError(f"adapter {directory} (made for {base}) does not fit this model: {e}") from None
    model.adapter_meta = meta
    return model


def quantize_for_inference(model: nn.Module, weights: str) -> nn.Module:
    """:func:`quantize_model` for a CLI: a loaded LoRA adapter is merged into its base weights first."""
    if weights != "fp32" and any(isinstance(m, LoRALinear) for m in model.modules()):
        merge_lora(model)
    return quantize_model(model, weights)
