"""LoRA: fine-tune a few low-rank matrices instead of the whole network (Hu et al., 2021).

A linear layer ``y = W x + b`` with a frozen ``W`` (out, in) learns an update ``ΔW = (alpha / rank) · B A``
with ``A`` (rank, in) and ``B`` (out, rank): ``rank · (in + out)`` trainable numbers instead of
``out · in``. ``A`` starts random (Kaiming-uniform, as in the paper's code and in peft) and ``B`` at zero, so
the wrapped model starts out computing exactly what the pretrained one did. ``alpha / rank`` scales the
update, which keeps a learning rate usable when the rank changes.

- :func:`apply_lora` wraps ``nn.Linear`` layers in :class:`LoRALinear` and freezes everything else;
- :func:`merge_lora` folds each ``B A`` into its base weight and puts the original layer objects back;
- :func:`save_lora` / :func:`load_lora` store only what training changed (safetensors), with the rank,
  alpha, wrapped layers and base shapes in the file's metadata.

**Which layers** (``targets``): each pattern is an :mod:`fnmatch` glob, matched case-sensitively against the
qualified module name of every ``nn.Linear`` (``blocks.0.attn.qkv``) *and every dotted suffix of it*, so
``"qkv"`` selects every block's fused query/key/value projection, ``"ff.*"`` both MLP layers of every block,
``"blocks.1.*"`` every layer of block 1 and ``"out_head"`` the output head. A pattern that selects no
linear layer is an error (a typo must not silently train nothing). The default wraps every ``nn.Linear``:
for :class:`~llm_companion.models.gpt.GPTModel` (and the Llama model) those are the transformer blocks' layers
and the output head. For a :class:`~llm_companion.finetune.classification.GPTClassifier` the default wraps the
blocks only and trains the new classification head fully: it starts random, so there is no pretrained
function for a low-rank update to adjust, and it is tiny (``emb_dim · classes + classes`` numbers, fewer
than one rank-2 adapter on it). Naming it in ``targets`` wraps it instead (the reference book's choice),
and then only its adapter trains.

**Tied weights.** GPT-2 uses the token-embedding matrix as its output head. Wrapping the head leaves the
shared matrix frozen and shared (the embedding is not unfrozen or copied); the adapter adds its update to
the head's output only, so the trained model reads tokens with the original embedding and scores them with
``W_emb + ΔW``. :func:`merge_lora` must then give the head its own matrix: merging a tied head unties it
(and sets ``cfg.tie_weights=False`` on a model that has such a config, so saving stores both matrices).
"""
from __future__ import annotations

import fnmatch
import json
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llm_companion.atomic import atomic_file
from llm_companion.finetune.classification import GPTClassifier

FORMAT = "llm_companion.lora/1"


class LoRAError(ValueError):
    """An invalid LoRA setting, or an adapter file that does not fit the model."""


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) · B(A(dropout(x)))`` around a frozen ``nn.Linear`` ``base``.

    ``lora_A`` is (rank, in) and ``lora_B`` (out, rank). Code that must not read ``base.weight`` alone (the
    fast decoding paths) sees that this is not a plain ``nn.Linear`` and calls it as a module.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own init (and peft's for A)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = (alpha / rank) · B A``, (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # two thin products, never the (out, in) update: (…, in) → (…, rank) → (…, out)
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + self.scaling * update

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


# --------------------------------------------------------------------------------------------- helpers
def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRA layers by qualified name (empty when it has none)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds LoRA layers (:class:`LoRALinear`), unmerged."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


def _linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    # isinstance: subclasses of nn.Linear (e.g. a fast decode layer) are linear layers too
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _classifier_head(model: nn.Module) -> str | None:
    """Qualified name of a classifier's fresh head, trained fully by default (None for other models)."""

    return "gpt.out_head" if isinstance(model, GPTClassifier) else None


def _matches(name: str, pattern: str) -> bool:
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts)))


def _normalize_targets(targets) -> list[str] | None:
    if targets is None:
        return None
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, Sequence) or not targets:
        raise LoRAError(f"targets must be a layer-name pattern or a non-empty list of them, got {targets!r}")
    for t in targets:
        if not isinstance(t, str) or not t.strip():
            raise LoRAError(f"each target must be a non-empty string (an fnmatch pattern), got {t!r}")
    return list(targets)


def select_targets(model: nn.Module, targets: str | Sequence[str] | None = None) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers that ``targets`` selects (see the module docstring)."""
    patterns = _normalize_targets(targets)
    linears = list(_linear_layers(model))
    if not linears:
        raise LoRAError(f"{type(model).__name__} has no nn.Linear layer for LoRA to wrap")
    if patterns is None:
        head = _classifier_head(model)
        return [n for n in linears if n != head]
    chosen = []
    for pattern in patterns:
        hits = [n for n in linears if _matches(n, pattern)]
        if not hits:
            shown = ", ".join(linears[:6]) + (f", … ({len(linears)} in all)" if len(linears) > 6 else "")
            raise LoRAError(f"target {pattern!r} matches no nn.Linear layer of {type(model).__name__}; "
                            f"patterns are fnmatch globs over names such as {shown}")
        chosen += hits
    return [n for n in linears if n in set(chosen)]  # model order, no duplicates


def _check_settings(rank, alpha, dropout) -> None:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise LoRAError(f"rank must be a positive integer (typically 4-64), got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise LoRAError(f"alpha must be a positive number (often equal to rank, or 2·rank), got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise LoRAError(f"dropout must be a number in [0, 1), got {dropout!r}")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --------------------------------------------------------------------------------------------- public API
def apply_lora(model: nn.Module, *, rank: int, alpha: float, targets: str | Sequence[str] | None = None,
               dropout: float = 0.0) -> nn.Module:
    """Wrap the ``nn.Linear`` layers selected by ``targets`` in :class:`LoRALinear` and freeze the rest.

    Afterwards only the adapters' ``lora_A``/``lora_B`` require gradients, plus, for a ``GPTClassifier``
    whose head is not among the targets, the classification head. Returns ``model`` (changed in place).
    """
    _check_settings(rank, alpha, dropout)
    if lora_layers(model):
        raise LoRAError("the model already has LoRA adapters; call merge_lora(model) first, or start from a "
                        "fresh copy of the base model")
    names = select_targets(model, targets)
    head = _classifier_head(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        base = model.get_submodule(name)
        _set_submodule(model, name, LoRALinear(base, int(rank), float(alpha), float(dropout)))
    if head is not None and head not in names:
        model.get_submodule(head).requires_grad_(True)
    model.lora_config = {"rank": int(rank), "alpha": float(alpha), "dropout": float(dropout),
                         "targets": _normalize_targets(targets), "layers": names}
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W ← W + (alpha/rank)·B A``) and put the base layers back.

    The original layer objects return (a subclass of ``nn.Linear`` stays that class); their
    ``requires_grad`` flags stay as :func:`apply_lora` left them (frozen). A base weight shared with another
    parameter (a tied output head) gets its own merged copy instead of changing the shared matrix.
    """
    layers = lora_layers(model)
    if not layers:
        raise LoRAError("the model has no LoRA adapters to merge; apply_lora() adds them")
    untied = False
    with torch.no_grad():
        for name, layer in layers.items():
            base = layer.base
            w = base.weight
            tied = [n for n, p in model.named_parameters(remove_duplicate=False)
                    if p is w and not n.startswith(name + ".")]
            merged = w + layer.delta_weight().to(w.dtype)
            if tied:  # e.g. the head shares tok_emb.weight: adding ΔW in place would change the embedding
                base.weight = nn.Parameter(merged, requires_grad=w.requires_grad)
                untied = True
            else:
                w.copy_(merged)
            _set_submodule(model, name, base)
    cfg = getattr(model, "cfg", None)
    if untied and getattr(cfg, "tie_weights", False) and hasattr(cfg, "replace"):
        model.cfg = cfg.replace(tie_weights=False)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def _extra_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters outside the adapters (a classifier's head): they are part of what training changed."""
    return {n: p for n, p in model.named_parameters()
            if p.requires_grad and not (n.endswith(".lora_A") or n.endswith(".lora_B"))}


def save_lora(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapters (and any other trainable parameter, e.g. a classifier's head) to ``path``.

    One safetensors file, written atomically. Its metadata holds the format, rank, alpha, dropout, the
    ``targets`` patterns, the wrapped layers with their base shapes ``[out, in]`` and the shapes of the
    other stored tensors, so :func:`load_lora` can rebuild and check. Returns the path.
    """
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise LoRAError("the model has no LoRA adapters to save; apply_lora() adds them")
    config = getattr(model, "lora_config", None) or {}
    first = next(iter(layers.values()))
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.lora_A"] = layer.lora_A
        tensors[f"{name}.lora_B"] = layer.lora_B
    extra = _extra_trainable(model)
    tensors.update(extra)
    metadata = {
        "format": FORMAT,
        "rank": str(first.rank),
        "alpha": repr(first.alpha),
        "dropout": repr(float(config.get("dropout", 0.0))),
        "targets": json.dumps(config.get("targets")),
        "layers": json.dumps({n: [m.out_features, m.in_features] for n, m in layers.items()}),
        "extra": json.dumps({n: list(p.shape) for n, p in extra.items()}),
        "model": type(model).__name__,
    }
    path = Path(path)
    with atomic_file(path) as tmp:  # readers see the old file or the complete new one, never half of one
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def read_lora_metadata(path: str | os.PathLike) -> dict:
    """The settings stored by :func:`save_lora`: rank, alpha, dropout, targets, layers, extra, model."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LoRAError(f"no adapter file at {path}; save one with save_lora(model, path)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise LoRAError(f"{path} cannot be read as safetensors ({e}); it is truncated or not an adapter file") \
            from None
    if meta.get("format") != FORMAT:
        raise LoRAError(f"{path} is not a LoRA adapter file (format {meta.get('format')!r}); "
                        f"write one with save_lora()")
    return {"rank": int(meta["rank"]), "alpha": float(meta["alpha"]), "dropout": float(meta["dropout"]),
            "targets": json.loads(meta["targets"]), "layers": json.loads(meta["layers"]),
            "extra": json.loads(meta["extra"]), "model": meta.get("model")}


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapters written by :func:`save_lora` into ``model`` and return it.

    ``model`` is either the plain base model (the adapters are added with the stored rank, alpha and
    layers) or one already wrapped the same way. A base of another shape, or a wrapping that differs from
    the file's, raises :class:`LoRAError` naming the first difference.
    """
    from safetensors.torch import load_file

    meta = read_lora_metadata(path)
    want = meta["layers"]
    mine = lora_layers(model)
    if mine:
        if set(mine) != set(want) or any(m.rank != meta["rank"] for m in mine.values()):
            raise LoRAError(f"{path} holds rank-{meta['rank']} adapters for {len(want)} layers, but the model is "
                            f"wrapped differently; load it into the plain base model instead")
        shapes = {n: [m.out_features, m.in_features] for n, m in mine.items()}
    else:
        shapes = {n: [m.out_features, m.in_features] for n, m in _linear_layers(model).items()}
    for name, shape in want.items():
        if name not in shapes:
            raise LoRAError(f"{path} has an adapter for layer {name!r}, which {type(model).__name__} lacks; "
                            f"load it into the base model it was trained on")
        if shapes[name] != shape:
            raise LoRAError(f"{path} was trained on a base whose {name!r} is {shape[1]} → {shape[0]}, but this "
                            f"model's is {shapes[name][1]} → {shapes[name][0]}; load it into a base model of "
                            f"the shape it was trained on")
    params = dict(model.named_parameters())
    for name, shape in meta["extra"].items():
        if name not in params or list(params[name].shape) != shape:
            found = "missing" if name not in params else f"of shape {list(params[name].shape)}"
            raise LoRAError(f"{path} stores {name!r} of shape {shape}, but the model's is {found}; "
                            f"load it into the kind of model it was trained on ({meta['model']})")
    if not mine:
        apply_lora(model, rank=meta["rank"], alpha=meta["alpha"], targets=list(want), dropout=meta["dropout"])
        model.lora_config["targets"] = meta["targets"]
        for name in meta["extra"]:  # trained parameters outside the adapters stay trainable, as when saved
            model.get_parameter(name).requires_grad_(True)
    tensors = load_file(str(path))
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora_A.copy_(tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"{name}.lora_B"])
        for name in meta["extra"]:
            model.get_parameter(name).copy_(tensors[name])
    return model
