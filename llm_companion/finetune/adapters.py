"""A LoRA adapter as a folder in peft's on-disk format, which ``peft.PeftModel.from_pretrained`` also loads.

The folder holds three files:

- ``adapter_config.json``: peft's ``LoraConfig`` (``peft_type`` LORA, ``r``, ``lora_alpha``, ``target_modules``
  with Hugging Face module names, ``lora_dropout``, ``task_type`` CAUSAL_LM, ``base_model_name_or_path``, …);
- ``adapter_model.safetensors``: the matrices under Hugging Face names, e.g.
  ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` for ``blocks.0.attn.q``'s ``A``;
- ``adapter.json``: what made it (base model, method, data, steps, …, and our ``targets`` patterns). peft
  never reads it; it would warn about unknown fields in ``adapter_config.json``, so they are kept apart.

The numbers need no change on the way: peft's ``lora_A.weight`` is (r, in) and ``lora_B.weight`` (out, r), as
our ``lora_A``/``lora_B``, and both scale ``B A`` by ``lora_alpha / r`` (peft's ``use_rslora``, ``alpha/√r``,
is read by folding ``√r`` into alpha). Only the names change (:mod:`llm_companion.models.hf_convert`):
:class:`~llm_companion.models.llama.LlamaModel` maps to transformers' ``LlamaForCausalLM`` (SmolLM2) and
:class:`~llm_companion.models.gpt.GPTModel` to ``GPT2LMHeadModel`` (``transformer.h.{i}.attn.c_attn``, …;
GPT-2's ``Conv1D`` layers store the base weight transposed, so the config says ``fan_in_fan_out``, but the
adapter matrices keep the shapes above). A classifier's adapters (appendix B) stay with
:func:`~llm_companion.finetune.lora.save_lora`: its trained head has no Hugging Face counterpart here.

:func:`save_adapter` writes the files into a temporary sibling folder and renames it into place, so a reader
sees the old adapter or the complete new one, never half of one. :func:`load_adapter` reads a folder written by
it or by ``PeftModel.save_pretrained`` (a copy of a tied ``lm_head.base_layer.weight`` that peft may add is a
base weight, not part of the adapter: ignored), and still reads the earlier format of this library
(``adapter.safetensors`` + ``adapter.json``). A folder that is not an adapter, an option we do not compute
(DoRA, biases, per-layer ranks, fully trained modules) or a model of another shape raises
:class:`~llm_companion.finetune.lora.LoRAError` with a one-line message. :func:`prepare_for_inference` is the
one route from the CLIs' ``--adapter`` and ``--weights`` to the model they run.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_companion.atomic import atomic_dir, file_mode
from llm_companion.finetune.lora import (
    LoRAError,
    LoRALinear,
    apply_lora,
    has_lora,
    load_lora,
    lora_layers,
    merge_lora,
    read_lora_metadata,
)
from llm_companion.inference.quantize import quantize_model, quantizes
from llm_companion.models.gpt import GPTModel
from llm_companion.models.hf_convert import hf_module_name, our_module_name
from llm_companion.models.llama import LlamaModel

ADAPTER_FILE, CONFIG_FILE, META = "adapter_model.safetensors", "adapter_config.json", "adapter.json"
OLD_ADAPTER_FILE = "adapter.safetensors"   # this library's format before peft's ("llm_companion.adapter/1")
FORMAT = "llm_companion.adapter/2"
PREFIX = "base_model.model."               # peft's prefix: PeftModel → LoraModel → the transformers model
_UNSUPPORTED = {"use_dora": "DoRA", "rank_pattern": "per-layer ranks (rank_pattern)",
                "alpha_pattern": "per-layer alphas (alpha_pattern)", "modules_to_save": "fully trained modules "
                "(modules_to_save)", "lora_bias": "a bias on lora_B", "trainable_token_indices": "trained tokens",
                "layer_replication": "layer replication", "alora_invocation_tokens": "activated LoRA",
                "use_qalora": "QA-LoRA", "target_parameters": "LoRA on parameters (target_parameters)"}


def architecture(model: nn.Module) -> str:
    """``"llama"`` or ``"gpt2"``: whose Hugging Face names ``model``'s adapters take."""
    if isinstance(model, LlamaModel):
        return "llama"
    if isinstance(model, GPTModel):
        return "gpt2"
    raise LoRAError(f"adapters in peft's format are for LlamaModel and GPTModel, not {type(model).__name__}; "
                    f"save a classifier's adapters with save_lora()")


def _linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``(out, in)`` of every linear layer, a LoRA-wrapped one under its own name (not ``….base``)."""
    wrapped = lora_layers(model)
    shapes = {n: (m.out_features, m.in_features) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and n.rpartition(".")[0] not in wrapped}
    return shapes | {n: (m.out_features, m.in_features) for n, m in wrapped.items()}


def _target_modules(chosen: list[str], every: list[str]) -> list[str]:
    """peft's ``target_modules`` for the HF modules ``chosen`` among ``every``: short names (``q_proj``) when
    they select exactly those, else two-part names (``attn.c_proj``), else the full names."""
    for depth in (1, 2):
        keys = sorted({".".join(n.split(".")[-depth:]) for n in chosen})
        picked = {n for n in every if any(n == k or n.endswith("." + k) for k in keys)}
        if picked == set(chosen):
            return keys
    return sorted(chosen)


def _peft_config(model: nn.Module, arch: str, hf_names: dict[str, str], meta: dict[str, Any]) -> dict[str, Any]:
    layer = next(iter(lora_layers(model).values()))
    every = [h for h in (hf_module_name(n, arch) for n in _linear_shapes(model)) if h]
    dropout = float((getattr(model, "lora_config", None) or {}).get("dropout", 0.0))
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": layer.rank, "lora_alpha": layer.alpha,
        "target_modules": _target_modules(list(hf_names.values()), every), "lora_dropout": dropout,
        "bias": "none", "fan_in_fan_out": arch == "gpt2",  # GPT-2's Conv1D keeps its weight as (in, out)
        "base_model_name_or_path": meta.get("base_model_name_or_path") or getattr(model, "name_or_path", None),
        "use_rslora": False, "use_dora": False, "modules_to_save": None, "init_lora_weights": True,
        "inference_mode": True, "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
        "layers_pattern": None, "revision": None,
    }


def save_adapter(model: nn.Module, directory: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``model``'s LoRA adapters in peft's format and ``meta`` (base model, method, data, steps, …) to
    ``directory``; ``meta["base_model_name_or_path"]`` (or ``model.name_or_path``) names the Hugging Face base.

    ``adapter.json`` also records rank, alpha and our ``targets`` patterns. Atomic: an existing adapter folder
    is replaced whole. Returns the folder.
    """
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise LoRAError("the model has no LoRA adapters to save; apply_lora() adds them")
    arch = architecture(model)
    extra = [n for n, p in model.named_parameters() if p.requires_grad and not n.endswith((".lora_A", ".lora_B"))]
    if extra:
        raise LoRAError(f"{extra[0]} trains outside the adapters, which peft's LoRA format cannot hold; "
                        f"save this model's adapters with save_lora()")
    if len({(m.rank, m.alpha) for m in layers.values()}) > 1:
        raise LoRAError("the adapters differ in rank or alpha; peft's format here holds one rank and alpha")
    hf_names = {n: hf_module_name(n, arch) for n in layers}
    if None in hf_names.values():
        name = next(n for n, h in hf_names.items() if h is None)
        raise LoRAError(f"layer {name!r} has no Hugging Face counterpart; adapt the blocks' layers or the head")
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PREFIX}{hf_names[name]}.lora_A.weight"] = layer.lora_A.detach().contiguous().cpu()
        tensors[f"{PREFIX}{hf_names[name]}.lora_B.weight"] = layer.lora_B.detach().contiguous().cpu()
    first = next(iter(layers.values()))
    info = {**meta, "rank": first.rank, "alpha": first.alpha,
            "targets": (getattr(model, "lora_config", None) or {}).get("targets"), "layers": len(layers),
            "format": FORMAT}
    config = _peft_config(model, arch, hf_names, meta)
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / ADAPTER_FILE), metadata={"format": "pt"})
        os.chmod(tmp / ADAPTER_FILE, file_mode())  # safetensors writes it private (0600); the others are not
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / META).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return directory


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoRAError(f"{path} is not valid JSON ({e}); write the adapter again") from None
    if not isinstance(data, dict):
        raise LoRAError(f"{path} holds a JSON {type(data).__name__}, not an object; write the adapter again")
    return data


def _not_an_adapter(directory: Path) -> LoRAError:
    return LoRAError(f"{directory} is not an adapter folder (needs {CONFIG_FILE} and {ADAPTER_FILE}); write one "
                     f"with `llm-companion finetune --out DIR` or peft's save_pretrained")


def read_peft_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``adapter_config.json`` of a peft-format folder, checked to be a LoRA that we compute (one-line
    :class:`LoRAError` otherwise)."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / ADAPTER_FILE).is_file():
        if (directory / "adapter_model.bin").is_file():
            raise LoRAError(f"{directory} holds adapter_model.bin (pickle), which is not read here; save it "
                            f"with save_pretrained(..., safe_serialization=True)")
        raise _not_an_adapter(directory)
    config = _read_json(directory / CONFIG_FILE)
    if config.get("peft_type") != "LORA":
        raise LoRAError(f"{directory} holds a {config.get('peft_type')!r} adapter; only LoRA is supported")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise LoRAError(f"{directory} uses {what}, which LoRALinear does not compute; save it without")
    if config.get("bias", "none") != "none":
        raise LoRAError(f"{directory} trains biases (bias={config['bias']!r}); only bias='none' is supported")
    if not isinstance(config.get("r"), int) or not isinstance(config.get("lora_alpha"), (int, float)):
        raise LoRAError(f"{directory / CONFIG_FILE} lacks an integer r or a number lora_alpha")
    return config


def read_adapter_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """What made the adapter in ``directory``: its ``adapter.json`` (base model, method, steps, …, rank, alpha,
    targets) or, for a folder written by peft, those fields read from ``adapter_config.json``.

    One-line :class:`LoRAError` when the folder is not an adapter.
    """
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() and (directory / OLD_ADAPTER_FILE).is_file():
        if not (directory / META).is_file():
            raise _not_an_adapter(directory)
        return _read_json(directory / META)                  # the earlier format: adapter.json says it all
    config = read_peft_config(directory)
    meta = {"base_model": config.get("base_model_name_or_path") or "an unnamed base model",
            "rank": config["r"], "alpha": config["lora_alpha"], "targets": config.get("target_modules"),
            "format": "peft"}
    if (directory / META).is_file():
        meta |= _read_json(directory / META)
    return meta


def _peft_layers(directory: Path, arch: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{our layer name: (A, B)}`` from a peft ``adapter_model.safetensors``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(directory / ADAPTER_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise LoRAError(f"{directory / ADAPTER_FILE} cannot be read as safetensors ({e}); write it again") from None
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, kind = key.removeprefix(PREFIX).rpartition(".")   # kind: weight
        module, _, part = module.rpartition(".")                     # part: lora_A, lora_B or base_layer
        if part == "base_layer" and kind == "weight":
            continue  # a copy of a (tied) base weight that peft saves beside an adapted head: not the adapter
        if kind.startswith("lora_embedding"):
            raise LoRAError(f"{directory.name} adapts an embedding ({module}.{part}); only linear layers are supported")
        ours = our_module_name(module, arch)
        if part not in ("lora_A", "lora_B") or kind != "weight" or ours is None:
            raise LoRAError(f"{directory.name}: tensor {key!r} is not a LoRA matrix of a {arch} linear layer; "
                            f"was the adapter made for another architecture?")
        found.setdefault(ours, {})[part] = tensor
    if not found:
        raise LoRAError(f"{directory / ADAPTER_FILE} holds no LoRA matrices")
    incomplete = [n for n, p in found.items() if len(p) != 2]
    if incomplete:
        raise LoRAError(f"{directory / ADAPTER_FILE} lacks lora_A or lora_B of {incomplete[0]}; write it again")
    return {n: (p["lora_A"], p["lora_B"]) for n, p in found.items()}


def _check_fit(model: nn.Module, layers: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int) -> None:
    """Raise a one-line :class:`LoRAError` naming the first layer the adapters do not fit."""
    shapes = _linear_shapes(model)
    mine = lora_layers(model)
    if mine and (set(mine) != set(layers) or any(m.rank != rank for m in mine.values())):
        raise LoRAError(f"the model is already wrapped differently (rank-{rank} adapters on {len(layers)} "
                        f"layers here); load it into the plain base model instead")
    for name, (a, b) in layers.items():
        if name not in shapes:
            raise LoRAError(f"it adapts layer {name!r}, which {type(model).__name__} lacks")
        out, inp = shapes[name]
        if tuple(a.shape) != (rank, inp) or tuple(b.shape) != (out, rank):
            raise LoRAError(f"its {name!r} is {a.shape[1]} → {b.shape[0]} (rank {a.shape[0]}), this model's is "
                            f"{inp} → {out}; load it into a base model of the shape it was trained on")


def _load_peft(model: nn.Module, directory: Path, meta: dict[str, Any]) -> nn.Module:
    config = read_peft_config(directory)
    rank = config["r"]
    # peft scales by lora_alpha / r, or lora_alpha / √r with use_rslora: the same as ours with alpha·√r
    alpha = float(config["lora_alpha"]) * (math.sqrt(rank) if config.get("use_rslora") else 1.0)
    try:
        layers = _peft_layers(directory, architecture(model))
        _check_fit(model, layers, rank)
    except LoRAError as e:
        raise LoRAError(f"adapter {directory} (made for {meta.get('base_model')}) does not fit this model: {e}") \
            from None
    if not has_lora(model):
        apply_lora(model, rank=rank, alpha=alpha, targets=list(layers), dropout=float(config.get("lora_dropout", 0)))
        # our own patterns when we wrote it ("q", "v"); the layers themselves for a folder peft wrote
        model.lora_config["targets"] = meta.get("targets") if meta.get("format") == FORMAT else list(layers)
    wrapped: dict[str, LoRALinear] = lora_layers(model)
    with torch.no_grad():
        for name, (a, b) in layers.items():
            wrapped[name].lora_A.copy_(a)
            wrapped[name].lora_B.copy_(b)
    return model


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Apply the adapter in ``directory`` to the base ``model`` (in place) and return it.

    Reads peft's format (written by :func:`save_adapter` or by ``PeftModel.save_pretrained`` for the Hugging
    Face twin of ``model``) and this library's earlier format. Raises :class:`LoRAError` (one line) when the
    folder is not an adapter or was made for another shape.
    """
    directory = Path(directory)
    meta = read_adapter_meta(directory)
    if (directory / CONFIG_FILE).is_file():
        _load_peft(model, directory, meta)
    else:
        read_lora_metadata(directory / OLD_ADAPTER_FILE)
        try:
            load_lora(model, directory / OLD_ADAPTER_FILE)
        except LoRAError as e:
            base = meta.get("base_model", "another model")
            raise LoRAError(f"adapter {directory} (made for {base}) does not fit this model: {e}") from None
    model.adapter_meta = meta
    return model


def prepare_for_inference(model: nn.Module, *, adapter: str | os.PathLike | None = None,
                          weights: str = "fp32") -> nn.Module:
    """``model`` as ``chat``, ``generate``, ``eval`` and ``serve`` run it; changed in place and returned.

    ``adapter`` (a folder written by :func:`save_adapter`, or by peft) is loaded first; then, for ``weights``
    ``"int8"`` or ``"q4"``, its LoRA layers are merged into the base weights and the linear layers quantized
    (:func:`~llm_companion.inference.quantize.quantize_model`). ``"fp32"`` keeps the adapter unmerged.
    """
    if adapter is not None:
        load_adapter(model, adapter)
    if quantizes(weights):
        if has_lora(model):
            merge_lora(model)
        quantize_model(model, weights)
    return model
