"""A LoRA adapter as a folder: ``adapter.safetensors`` (the trained matrices) + ``adapter.json`` (what made it).

:func:`save_adapter` writes both into a temporary sibling folder and renames it into place, so a reader sees
the old adapter or the complete new one, never half of one. :func:`load_adapter` applies LoRA to a base model
with the stored rank, alpha and layers and loads the weights; an adapter made for another model shape raises
:class:`~llm_companion.finetune.lora.LoRAError` with a one-line message. :func:`prepare_for_inference` is the one
route from the CLIs' ``--adapter`` and ``--weights`` to the model they run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from llm_companion.atomic import atomic_dir
from llm_companion.finetune.lora import (
    LoRAError,
    has_lora,
    load_lora,
    lora_layers,
    merge_lora,
    read_lora_metadata,
    save_lora,
)
from llm_companion.inference.quantize import quantize_model, quantizes

ADAPTER_FILE, META = "adapter.safetensors", "adapter.json"


def save_adapter(model: nn.Module, directory: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``model``'s LoRA adapters and ``meta`` (base model, method, data, steps, …) to ``directory``.

    ``adapter.json`` also records rank, alpha and targets from the model. Atomic: an existing adapter
    folder is replaced whole. Returns the folder.
    """
    layers = lora_layers(model)
    if not layers:
        raise LoRAError("the model has no LoRA adapters to save; apply_lora() adds them")
    directory = Path(directory)
    config = getattr(model, "lora_config", None) or {}
    first = next(iter(layers.values()))
    info = {**meta, "rank": first.rank, "alpha": first.alpha, "targets": config.get("targets"),
            "layers": len(layers), "format": "llm_companion.adapter/1"}
    with atomic_dir(directory) as tmp:
        save_lora(model, tmp / ADAPTER_FILE)
        (tmp / META).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return directory


def read_adapter_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``adapter.json`` of an adapter folder (one-line :class:`LoRAError` when it is not one)."""
    directory = Path(directory)
    path = directory / META
    if not path.is_file() or not (directory / ADAPTER_FILE).is_file():
        raise LoRAError(f"{directory} is not an adapter folder (needs {META} and {ADAPTER_FILE}); "
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
    read_lora_metadata(directory / ADAPTER_FILE)
    try:
        load_lora(model, directory / ADAPTER_FILE)
    except LoRAError as e:
        base = meta.get("base_model", "another model")
        raise LoRAError(f"adapter {directory} (made for {base}) does not fit this model: {e}") from None
    model.adapter_meta = meta
    return model


def prepare_for_inference(model: nn.Module, *, adapter: str | os.PathLike | None = None,
                          weights: str = "fp32") -> nn.Module:
    """``model`` as ``chat``, ``generate``, ``eval`` and ``serve`` run it; changed in place and returned.

    ``adapter`` (a folder written by :func:`save_adapter`) is loaded first; then, for ``weights`` ``"int8"``
    or ``"q4"``, its LoRA layers are merged into the base weights and the linear layers quantized
    (:func:`~llm_companion.inference.quantize.quantize_model`). ``"fp32"`` keeps the adapter unmerged.
    """
    if adapter is not None:
        load_adapter(model, adapter)
    if quantizes(weights):
        if has_lora(model):
            merge_lora(model)
        quantize_model(model, weights)
    return model
