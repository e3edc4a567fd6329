"""The one speed mechanism (``llm_companion.inference.fast``): its compiled step equals the plain models.

For GPT and Llama, fp32, bf16, int8 and q4 weights, one row and two: every one-token step of
``decoder(model)`` must give the logits (and the KV cache) of ``model(idx, cache, last_only=True)``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ODD
from test_llama import random_llama, tiny_config

import llm_companion.inference.fast as fast
from llm_companion import GPTModel, generate
from llm_companion.inference.quantize import quantize_model
from llm_companion.models.kv_cache import KVCache


def gpt(weights: str = "fp32") -> GPTModel:
    torch.manual_seed(0)
    model = GPTModel(ODD.replace(emb_dim=96, n_heads=4)).eval()  # q4 needs input widths divisible by 32
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)  # non-zero biases, so that a dropped one shows
    return quantize_model(model, weights)


def llama(weights: str = "fp32") -> torch.nn.Module:
    return quantize_model(random_llama(tiny_config(50)), weights)


MODELS = {"gpt": gpt, "llama": llama}


def steps_against_the_model(model, batch: int, dtype=torch.float32, n: int = 14):
    """(decoder's logits, the model's logits, decoder's cache, the model's cache) over a prompt and steps."""
    ids = torch.randint(0, model.cfg.vocab_size, (batch, n), generator=torch.Generator().manual_seed(1))
    step = fast.decoder(model)
    ours = KVCache(model.cfg, batch, initial_len=4, dtype=dtype)    # grows inside the decoding steps too
    theirs = KVCache(model.cfg, batch, initial_len=4, dtype=dtype)
    got, want = [], []
    with torch.no_grad():
        for a, b in [(0, 5)] + [(t, t + 1) for t in range(5, n)]:
            got.append(step(ids[:, a:b], ours))
            want.append(model(ids[:, a:b], theirs, last_only=True))
    return torch.cat(got, 1).float(), torch.cat(want, 1).float(), ours, theirs


@pytest.mark.parametrize("family", ["gpt", "llama"])
@pytest.mark.parametrize("weights, tol", [("fp32", 1e-5), ("int8", 2e-2), ("q4", 2e-2)])
@pytest.mark.parametrize("batch", [1, 2])
def test_compiled_step_equals_the_model(family, weights, tol, batch, monkeypatch):
    calls = []
    compiled = fast.step_function()
    assert isinstance(compiled, torch.jit.ScriptFunction)  # the speed rests on it: no silent fallback
    monkeypatch.setattr(fast, "step_function", lambda: lambda *a: calls.append(1) or compiled(*a))
    got, want, ours, theirs = steps_against_the_model(MODELS[family](weights), batch)
    assert len(calls) == 9  # every one-token step took the compiled step, the prompt did not
    # quantized: the same codes through the same kernels; only the bf16 rounding of inputs may differ
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    n = theirs.length
    assert ours.length == n and ours.capacity >= n
    torch.testing.assert_close(ours.k[:, :, :, :n], theirs.k[:, :, :, :n], atol=tol, rtol=tol)
    torch.testing.assert_close(ours.v[:, :, :, :n], theirs.v[:, :, :, :n], atol=tol, rtol=tol)


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_bf16_models_step_too(family):
    model = MODELS[family]().to(torch.bfloat16)
    got, want, _, _ = steps_against_the_model(model, 1, dtype=torch.bfloat16)
    torch.testing.assert_close(got, want, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_the_python_step_is_the_compiled_one(family, monkeypatch):
    # the step is also correct uncompiled (where TorchScript is unavailable it runs as Python)
    monkeypatch.setattr(fast, "step_function", lambda: fast.decode_step)
    got, want, _, _ = steps_against_the_model(MODELS[family]("q4"), 2)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


def test_a_failed_compilation_falls_back_in_one_line(monkeypatch):
    monkeypatch.setattr(fast, "_compiled", [])
    monkeypatch.setattr(torch.jit, "script", lambda f: (_ for _ in ()).throw(RuntimeError("no source\nmore")))
    with pytest.warns(UserWarning, match=r"^decoding runs uncompiled \(slower\): TorchScript failed: no source$"):
        assert fast.step_function() is fast.decode_step
    got, want, _, _ = steps_against_the_model(llama(), 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_out", [6, 7, 50257])
def test_row_split_product_equals_f_linear(n_out):
    torch.manual_seed(0)
    w, x = torch.randn(n_out, 48), torch.randn(1, 48)
    assert torch.allclose(fast.row_split_product(x, w), F.linear(x, w), atol=1e-5)


def test_a_lora_model_decodes_through_its_modules():
    from llm_companion.finetune.lora import apply_lora

    model = random_llama(tiny_config(50))
    apply_lora(model, rank=2, alpha=4)
    assert fast.decode_plan(model) is None  # the step would read the base weight alone
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)  # a non-zero adapter, so that ignoring it would change the logits
    got, want, _, _ = steps_against_the_model(model, 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_generation_without_fast_never_takes_the_step(family, monkeypatch):
    # generate() without fast=True runs the modules the chapters teach, and fast=True gives the same tokens
    model = MODELS[family]()
    prompt = torch.tensor([[1, 2, 3]])
    fast_tokens = generate(model, prompt, 12, fast=True)
    monkeypatch.setattr(fast, "step_function", lambda: pytest.fail("the plain path took the compiled step"))
    monkeypatch.setattr(fast, "decode_step", lambda *a: pytest.fail("the plain path took the step"))
    assert torch.equal(generate(model, prompt, 12), fast_tokens)
