"""Llama weights in llama.cpp's GGUF format: read into a :class:`~llm_companion.models.llama.LlamaModel`.

Beside :mod:`llm_companion.models.checkpoint` (the book's own safetensors folders) and
:mod:`llm_companion.models.openai_checkpoint` (OpenAI's GPT-2 layout). The file itself is parsed and
dequantized by :mod:`llm_companion.data.gguf_file`; here its tensor names are mapped to the model's
parameters and Q and K are put back from llama.cpp's row order (:func:`~llm_companion.models.llama.unpermute_qk`).
"""
from __future__ import annotations

import os

import torch

from llm_companion.data.gguf_file import GGUFContents, GGUFError, read_gguf
from llm_companion.models.llama import LlamaConfig, LlamaModel, rope_tables, unpermute_qk
from llm_companion.progress import progress


def gguf_name_map(n_layers: int) -> dict[str, str]:
    """llama.cpp's tensor names → this model's parameter names."""
    names = {"token_embd.weight": "tok_emb.weight", "output_norm.weight": "final_norm.weight",
             "output.weight": "out_head.weight"}
    per_layer = {"attn_norm": "attn_norm", "attn_q": "attn.q", "attn_k": "attn.k", "attn_v": "attn.v",
                 "attn_output": "attn.o", "ffn_norm": "ffn_norm", "ffn_gate": "ffn.gate", "ffn_up": "ffn.up",
                 "ffn_down": "ffn.down"}
    for i in range(n_layers):
        for theirs, ours in per_layer.items():
            names[f"blk.{i}.{theirs}.weight"] = f"blocks.{i}.{ours}.weight"
    return names


def load_llama_gguf(path: str | os.PathLike | GGUFContents, dtype: torch.dtype = torch.float32, *,
                    unpermute: bool = True, device: str | torch.device = "cpu") -> LlamaModel:
    """Build a :class:`LlamaModel` from a llama.cpp GGUF file, every tensor dequantized to ``dtype``.

    ``unpermute=False`` keeps Q and K in llama.cpp's row order — wrong with :func:`apply_rope`'s rotate-halves
    convention (logits then differ wildly); it exists so that the bug can be shown and tested.
    """

    contents = path if isinstance(path, GGUFContents) else read_gguf(path)
    tied = "output.weight" not in contents.tensors
    cfg = LlamaConfig.from_gguf_metadata(contents.metadata, tie_weights=tied)
    with torch.device("meta"):  # no time spent on a random init that is overwritten next
        model = LlamaModel(cfg)
    names = gguf_name_map(cfg.n_layers)
    own = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for gname in progress(list(contents.tensors), desc="dequantizing GGUF", unit="tensor"):
        ours = names.get(gname)
        if ours is None:
            raise GGUFError(f"{contents.path}: unexpected tensor {gname!r} for a llama model")
        w = contents.dequantize(gname)
        if unpermute and ours.endswith("attn.q.weight"):
            w = unpermute_qk(w, cfg.n_heads)
        elif unpermute and ours.endswith("attn.k.weight"):
            w = unpermute_qk(w, cfg.n_kv_heads)
        if tuple(w.shape) != tuple(own[ours].shape):
            raise GGUFError(f"{contents.path}: tensor {gname} has shape {tuple(w.shape)}, the metadata implies "
                            f"{tuple(own[ours].shape)}")
        state[ours] = w.to(device=device, dtype=dtype)
    missing = sorted(set(own) - set(state))
    if missing:
        raise GGUFError(f"{contents.path}: no tensor for {missing[0]} ({len(missing)} missing)")
    model.load_state_dict(state, strict=False, assign=True)  # takes the tensors in place of the meta ones
    if tied:
        model.out_head.weight = model.tok_emb.weight
    cos, sin = rope_tables(cfg.head_dim, cfg.context_length, cfg.rope_theta, device=device)
    model.rope_cos, model.rope_sin = cos, sin
    return model.eval()
