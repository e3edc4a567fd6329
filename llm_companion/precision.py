"""Which floating-point precision a run uses: bfloat16 only where the hardware computes it natively.

A CPU with ``avx512_bf16`` or AMX (Intel Sapphire Rapids and later, AMD Zen 4 and later) multiplies bfloat16
matrices in hardware, and autocast to it trains about twice as fast as float32. A CPU without them (AMD Zen 2
and 3, every Intel client CPU with AVX2 only) emulates bfloat16 in software: the same product then runs 30-50x
*slower* than in float32. So a setting that asks for bf16 (``TrainConfig.bf16``, a recipe's ``bf16``) gets it
only where :func:`bf16_is_native` says so, and float32 otherwise, said in one line. This module is the one
place that decides.

PyTorch can be told to use a lower instruction set than the CPU has (``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2``: how the book tries the AVX2 code paths on an AVX-512 machine); the check
follows what PyTorch will actually run, not only what the CPU could.
"""
from __future__ import annotations

import functools

import torch

# bf16 against fp32 for one (2048 x 192) @ (192 x 768) product with its backward, torch 2.13, 2 threads,
# measured on an AVX-512 machine forced to its AVX2 code paths: 285 ms against 11 ms (benchmarks/README.md).
EMULATED_SLOWDOWN = "30-50x slower than float32"


@functools.cache
def _cpu_bf16() -> tuple[bool, str]:
    """(native, why) for the CPU, as PyTorch is configured in this process."""
    cpu = torch.cpu
    has = [name for name, probe in (("avx512_bf16", "_is_avx512_bf16_supported"),
                                    ("amx_bf16", "_is_amx_tile_supported"))
           if getattr(cpu, probe, lambda: False)()]
    if not has:
        return False, "this CPU has no bfloat16 instructions (no avx512_bf16, no AMX)"
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.startswith("AVX512"):
        return False, (f"PyTorch runs this CPU's {capability} kernels (ATEN_CPU_CAPABILITY), which have no "
                       f"bfloat16 instructions")
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, "oneDNN is limited below bfloat16 instructions (ONEDNN_MAX_CPU_ISA)"
    return True, f"this CPU computes bfloat16 natively ({', '.join(has)})"


def _device_type(device: torch.device | str | None) -> str:
    if device is None:
        return "cpu"
    return torch.device(device).type


def bf16_support(device: torch.device | str | None = None) -> tuple[bool, str]:
    """``(native, reason)``: whether ``device`` computes bfloat16 in hardware, and a few words on why."""
    kind = _device_type(device)
    if kind == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "this GPU " + ("computes bfloat16 natively" if ok else "has no native bfloat16")
    if kind == "cpu":
        return _cpu_bf16()
    return False, f"bfloat16 autocast is not used on {kind}"


def bf16_is_native(device: torch.device | str | None = None) -> bool:
    """True where bfloat16 autocast runs at hardware speed on ``device`` (default: the CPU)."""
    return bf16_support(device)[0]


def use_bf16(requested: bool, device: torch.device | str | None = None, *, what: str = "training",
             verbose: bool = True) -> bool:
    """Whether to run bfloat16 autocast: ``requested`` and native on ``device``.

    When bf16 was asked for and the device would emulate it, prints one line saying that ``what`` runs in
    float32 instead, and why.
    """
    if not requested:
        return False
    native, why = bf16_support(device)
    if not native and verbose:
        print(f"bf16 asked for, {what} runs in fp32: {why} (emulated bf16 would be {EMULATED_SLOWDOWN})")
    return native


def describe(requested: bool, device: torch.device | str | None = None) -> str:
    """The precision a setting of ``bf16=requested`` runs at on ``device``, in a few words."""
    if not requested:
        return "fp32"
    native, why = bf16_support(device)
    return f"bf16 autocast ({why})" if native else f"fp32, not the bf16 asked for: {why}"
