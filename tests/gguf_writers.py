"""Writers the tests use to make small GGUF files (a tiny Llama with a tiny tokenizer); the library only reads GGUF.

:func:`write_gguf` writes any tensors and metadata, :func:`save_llama_gguf` a :class:`LlamaModel` (Q and K in
llama.cpp's order, as its converter writes them), :func:`train_byte_bpe_metadata` a small byte-level BPE as
``tokenizer.ggml.*`` metadata. Tests import them with ``from gguf_writers import ...`` (``tests/`` is on
pytest's path, as for ``conftest``).
"""
from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import regex
import torch

from llm_companion.atomic import atomic_file
from llm_companion.data.gguf_file import quantize
from llm_companion.data.tokenizer import GGUF_CONTROL, SMOLLM_PAT_STR, _gpt2_byte_decoder
from llm_companion.models.gguf_checkpoint import gguf_name_map
from llm_companion.models.llama import LlamaModel, permute_qk


def write_gguf(path: str | os.PathLike, arch: str, metadata: dict[str, Any],
               tensors: dict[str, tuple[np.ndarray | torch.Tensor, str]]) -> Path:
    """Write a GGUF file atomically: ``metadata`` (plain values; ints are uint32, floats float32) and
    ``tensors`` as ``name -> (float values in PyTorch shape, storage type name)``."""
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

    path = Path(path)
    with atomic_file(path) as tmp:
        writer = GGUFWriter(str(tmp), arch)
        for key, value in metadata.items():
            if key == "general.architecture":
                continue  # the writer adds it
            if isinstance(value, bool):
                writer.add_bool(key, value)
            elif isinstance(value, int):
                writer.add_uint32(key, value) if value >= 0 else writer.add_int32(key, value)
            elif isinstance(value, float):
                writer.add_float32(key, value)
            elif isinstance(value, str):
                writer.add_string(key, value)
            elif isinstance(value, (list, tuple)) and value and isinstance(value[0], int):
                writer.add_key_value(key, list(value), GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
            else:
                writer.add_array(key, list(value))
        for name, (values, type_name) in tensors.items():
            qtype = GGMLQuantizationType[type_name]
            if type_name in ("F32", "F16"):
                arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
                writer.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32 if type_name == "F32"
                                                             else np.float16))
            else:
                writer.add_tensor(name, quantize(values, type_name), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def save_llama_gguf(model: LlamaModel, path: str | os.PathLike, *, matrix_type: str = "Q4_1",
                    embedding_type: str = "Q8_0", metadata: dict[str, Any] | None = None, name: str = "llama"):
    """Write ``model`` as a llama.cpp GGUF file (Q and K permuted to llama.cpp's layout, norms in F32).

    ``matrix_type``/``embedding_type`` choose the storage of the linear layers and the embedding (``F32``,
    ``F16``, ``Q8_0``, ``Q4_1``, ...); ``metadata`` adds keys such as a tokenizer's ``tokenizer.ggml.*``.
    :func:`load_llama_gguf` reads the file back (exactly, for F32).
    """

    cfg = model.cfg
    meta: dict[str, Any] = {
        "general.name": name, "llama.block_count": cfg.n_layers, "llama.context_length": cfg.context_length,
        "llama.embedding_length": cfg.emb_dim, "llama.feed_forward_length": cfg.hidden_dim,
        "llama.attention.head_count": cfg.n_heads, "llama.attention.head_count_kv": cfg.n_kv_heads,
        "llama.rope.freq_base": float(cfg.rope_theta), "llama.attention.layer_norm_rms_epsilon": cfg.norm_eps,
        "llama.rope.dimension_count": cfg.head_dim, "llama.vocab_size": cfg.vocab_size,
    }
    meta.update(metadata or {})
    ours_to_gguf = {ours: theirs for theirs, ours in gguf_name_map(cfg.n_layers).items()}
    tensors = {}
    for ours, p in model.state_dict().items():
        if ours not in ours_to_gguf or (ours == "out_head.weight" and cfg.tie_weights):
            continue  # RoPE tables are recomputed; a tied head is the embedding
        w = p.detach().float().cpu()
        if ours.endswith("attn.q.weight"):
            w = permute_qk(w, cfg.n_heads)
        elif ours.endswith("attn.k.weight"):
            w = permute_qk(w, cfg.n_kv_heads)
        kind = "F32" if w.dim() == 1 else embedding_type if ours == "tok_emb.weight" else matrix_type
        tensors[ours_to_gguf[ours]] = (w, kind)
    return write_gguf(path, "llama", meta, tensors)


def train_byte_bpe_metadata(text: str, n_merges: int, *, control_tokens: Sequence[str] = (
        "<|endoftext|>", "<|im_start|>", "<|im_end|>"), pattern: str = SMOLLM_PAT_STR) -> dict[str, object]:
    """A small byte-level BPE learned from ``text``, as GGUF ``tokenizer.ggml.*`` metadata (for tests and toys).

    Ids: the control tokens, the 256 bytes, then one token per merge in the order learned (so rank = id, as in
    SmolLM2's file). Each step merges the most frequent adjacent pair (ties: the first in sorted order).
    """
    byte_char = {b: c for c, b in _gpt2_byte_decoder().items()}
    words = collections.Counter(tuple(byte_char[b] for b in w.encode("utf-8")) for w in regex.findall(pattern, text))
    merges: list[str] = []
    known = set(byte_char.values())
    for _ in range(n_merges):
        pairs: collections.Counter = collections.Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:], strict=False):
                if pair[0] + pair[1] not in known:  # a token is made once (rank = id stays one-to-one)
                    pairs[pair] += n
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(f"{best[0]} {best[1]}")
        known.add(best[0] + best[1])
        merged = collections.Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    tokens = [*control_tokens, *(byte_char[b] for b in range(256)), *(m.replace(" ", "") for m in merges)]
    types = [GGUF_CONTROL] * len(control_tokens) + [1] * (len(tokens) - len(control_tokens))
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.bos_token_id": 1 if len(control_tokens) > 1 else 0,
            "tokenizer.ggml.eos_token_id": 2 if len(control_tokens) > 2 else 0,
            "tokenizer.ggml.add_bos_token": False}
