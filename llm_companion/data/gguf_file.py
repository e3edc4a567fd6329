"""GGUF files: llama.cpp's single-file format for a model's weights, tokenizer and settings.

A GGUF file is a header of typed key/value metadata (``llama.block_count``, ``tokenizer.ggml.tokens``, …), a
table of tensors (name, shape, storage type, offset) and the tensor data, each tensor stored either as
plain floats (F32, F16) or in a block-quantized format: Q8_0 keeps blocks of 32 weights as 32 int8 values and
one fp16 scale; Q4_1 keeps blocks of 32 weights as 4-bit codes with an fp16 scale and an fp16 minimum.

``read_gguf(path)`` parses a file with the ``gguf`` package (the reference reader, memory-mapped: nothing is
copied until asked for) into plain Python metadata and :class:`GGUFTensor` records; ``GGUFContents.dequantize``
turns one tensor into a float32 ``torch.Tensor`` through ``gguf.quants.dequantize``. A file that is not GGUF,
truncated or whose header is damaged raises :class:`GGUFError`, one line naming the file.

Shapes here are PyTorch's order, ``(out_features, in_features)``; GGUF itself lists dimensions the other way
round (fastest-varying first).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

GGUF_MAGIC = b"GGUF"


class GGUFError(ValueError):
    """A file that cannot be read as GGUF (not GGUF, truncated, damaged header, unknown tensor)."""


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as stored: ``raw`` holds the quantized blocks (uint8, one row per output row) or the floats."""

    name: str
    type_name: str              # "Q8_0", "Q4_1", "F32", ...
    shape: tuple[int, ...]      # PyTorch order, e.g. (out_features, in_features)
    raw: np.ndarray = field(repr=False)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))

    @property
    def n_bytes(self) -> int:
        """Bytes the tensor occupies in the file."""
        return int(self.raw.nbytes)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.n_bytes / self.n_elements


@dataclass
class GGUFContents:
    """What :func:`read_gguf` found: the file's metadata (plain Python values) and its tensors by name."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def dequantize(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Tensor ``name`` as floats of ``dtype`` in PyTorch shape, decoded by ``gguf.quants.dequantize``."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        try:
            t = self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named {name!r} (it holds {len(self.tensors)} tensors, "
                            f"e.g. {', '.join(list(self.tensors)[:3])})") from None
        values = dequantize(np.asarray(t.raw), GGMLQuantizationType[t.type_name])
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(t.shape)
        if not values.flags.writeable:  # F32 tensors come straight from the read-only memory map
            values = values.copy()
        return torch.from_numpy(values).to(dtype)

    def n_parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())

    def n_bytes(self) -> int:
        """Bytes of tensor data (the file minus its header)."""
        return sum(t.n_bytes for t in self.tensors.values())


def block_format(type_name: str) -> tuple[int, int]:
    """``(weights per block, bytes per block)`` of a GGUF storage type, e.g. ``Q4_1 -> (32, 20)``."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        return tuple(GGML_QUANT_SIZES[GGMLQuantizationType[type_name]])
    except KeyError:
        raise GGUFError(f"unknown GGUF storage type {type_name!r}; known: "
                        f"{', '.join(t.name for t in GGML_QUANT_SIZES)}") from None


def bits_per_weight(type_name: str) -> float:
    """Storage cost of one weight in a format (F32 32, F16 16, Q8_0 8.5, Q4_1 5, ...)."""
    n, nbytes = block_format(type_name)
    return 8 * nbytes / n


def _plain(value: Any) -> Any:
    """Metadata values as plain Python types (numpy scalars become int/float)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_gguf(path: str | os.PathLike) -> GGUFContents:
    """Parse a GGUF file (memory-mapped); raise :class:`GGUFError` naming the file if it cannot be read."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        reader = GGUFReader(path, "r")
        metadata = {name: _plain(fld.contents()) for name, fld in reader.fields.items()}
        tensors = {}
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            tensors[t.name] = GGUFTensor(t.name, t.tensor_type.name, shape, t.data)
            if t.data.nbytes != t.n_bytes:
                raise ValueError(f"tensor {t.name} holds {t.data.nbytes} of its {t.n_bytes} bytes")
    except GGUFError:
        raise
    except (ValueError, OSError, IndexError, KeyError, TypeError, OverflowError, MemoryError,
            UnicodeDecodeError) as e:
        size = path.stat().st_size
        raise GGUFError(f"{path}: damaged or truncated GGUF file ({size:,} bytes; {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); fetch it again") from None
    return GGUFContents(path, metadata, tensors)


def quantize(values: np.ndarray | torch.Tensor, type_name: str) -> np.ndarray:
    """``values`` (rows, cols) stored in format ``type_name`` (bytes for block formats), by ``gguf.quants``."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize as _quantize

    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    block, _ = block_format(type_name)
    if values.shape[-1] % block:
        raise GGUFError(f"{type_name} stores rows in blocks of {block} values; a row of {values.shape[-1]} "
                        f"does not fit (use F32 or F16 for this tensor)")
    return _quantize(np.ascontiguousarray(values, dtype=np.float32), GGMLQuantizationType[type_name])
