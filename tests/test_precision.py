"""bf16 only where the hardware computes it: the check, and what training does with it on either kind of CPU."""
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from llm_companion import GPTConfig, GPTModel, precision
from llm_companion.data.dataset import GPTDataset
from llm_companion.training.loop import TrainConfig, train

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def _in_subprocess(code: str, **env) -> str:
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def _hardware_bf16() -> bool:
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def test_native_bf16_follows_the_hardware_and_what_pytorch_runs():
    native, why = precision.bf16_support("cpu")
    capability = torch.backends.cpu.get_cpu_capability()
    assert native == (_hardware_bf16() and capability.startswith("AVX512")
                      and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert why and ("natively" in why) == native
    assert precision.bf16_is_native() == native


def test_the_forced_avx2_code_paths_have_no_native_bf16():
    # how CI tries an AVX2-only CPU on an AVX-512 machine: PyTorch's kernels, oneDNN and MKL held to AVX2
    out = _in_subprocess("import torch; from llm_companion import precision; "
                         "print(torch.backends.cpu.get_cpu_capability(), *precision.bf16_support())", **AVX2)
    assert out.startswith("AVX2 False"), out
    assert "no bfloat16" in out or "ATEN_CPU_CAPABILITY" in out


def test_use_bf16_says_in_one_line_when_it_falls_back_to_fp32(monkeypatch, capsys):
    monkeypatch.setattr(precision, "_cpu_bf16", lambda: (False, "no bf16 on this test CPU"))
    assert precision.use_bf16(True, "cpu", what="evaluation") is False
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and "evaluation runs in fp32" in said and "no bf16 on this test CPU" in said
    assert precision.use_bf16(False, "cpu") is False and capsys.readouterr().out == ""  # fp32 asked: silent
    assert precision.describe(True, "cpu").startswith("fp32, not the bf16 asked for")
    assert precision.describe(False, "cpu") == "fp32"

    monkeypatch.setattr(precision, "_cpu_bf16", lambda: (True, "native here"))
    assert precision.use_bf16(True, "cpu") is True and capsys.readouterr().out == ""
    assert precision.describe(True, "cpu") == "bf16 autocast (native here)"


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 spelled it differently
        return torch.is_autocast_cpu_enabled()


@pytest.mark.parametrize("native", [False, True])
def test_training_asked_for_bf16_autocasts_only_where_it_is_native(monkeypatch, capsys, native):
    monkeypatch.setattr(precision, "_cpu_bf16", lambda: (native, "test CPU"))
    ids = torch.arange(400) % 11
    loader = DataLoader(GPTDataset(ids, max_length=8, stride=8), batch_size=4)
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=16, context_length=8))
    seen = []

    def loss_fn(m, batch):
        seen.append(_autocast_on())
        x, y = batch
        return torch.nn.functional.cross_entropy(m(x).flatten(0, 1).float(), y.flatten())

    train(model, loader, loader, TrainConfig(epochs=1, max_steps=2, bf16=True, eval_batches=1), loss_fn=loss_fn)
    assert seen and set(seen) == {native}  # every training and evaluation forward
    said = capsys.readouterr().out
    assert ("training runs in fp32" in said) == (not native)
