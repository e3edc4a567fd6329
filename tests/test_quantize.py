"""Weight-only quantization (inference.quantize): round-trip bounds, kernels against dequantize + F.linear,
whole models against fp32, and the errors a user can cause."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llm_companion import GPTConfig, GPTModel
from llm_companion.inference.generation import generate
from llm_companion.inference.quantize import (
    PACKED_MAX_ROWS,
    Int8Linear,
    Q4Linear,
    QuantizedLinear,
    QuantizeError,
    absmax_int8,
    dequantize_int8,
    dequantize_q4,
    quantize_model,
    quantize_q4,
    weight_bytes_per_token,
)
from llm_companion.models.llama import LLAMA_PRESETS, LlamaModel


def test_absmax_int8_round_trip_within_half_a_step():
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 3, 48)[:, None]
    q, scale = absmax_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (48,)
    assert q.abs().amax(dim=1).eq(127).all()                       # each row's largest weight uses the full range
    err = (dequantize_int8(q, scale) - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()
    assert err.amax() > 0                                          # it is a lossy code, not a copy


def test_q4_round_trip_within_half_a_step_and_exact_on_q4_grid():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 128, generator=g)
    codes, scale, minimum = quantize_q4(w)
    assert int(codes.max()) <= 15 and scale.shape == (32, 4)
    err = (dequantize_q4(codes, scale, minimum) - w).abs().reshape(32, 4, 32)
    assert (err <= scale[..., None] / 2 + 1e-6).all()
    # weights already on a 4-bit grid (as a Q4_1 GGUF's) with both ends used come back exactly
    grid = torch.randint(0, 16, (32, 128), generator=g)
    grid[:, ::32], grid[:, 1::32] = 0, 15
    on_grid = grid.float() * 0.01 - 0.05
    c2, s2, m2 = quantize_q4(on_grid)
    torch.testing.assert_close(dequantize_q4(c2, s2, m2), on_grid, atol=1e-6, rtol=0)


def _reference(layer: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    """What the packed kernel must compute: bf16 input and bf16 scales, products summed exactly, the result
    rounded to bf16 (the kernels return the input's dtype), then the bias in fp32."""
    xb = x.bfloat16().float()
    if isinstance(layer, Int8Linear):
        w = layer.qweight.float() * layer.scale.bfloat16().float()[:, None]
    else:
        codes = torch.stack([layer.codes & 15, layer.codes >> 4], dim=-1).reshape(layer.out_features, -1)
        sz = layer.scale_zeros.float()[:, : layer.out_features].transpose(0, 1)   # (N, K/group, 2)
        g = codes.reshape(layer.out_features, sz.shape[1], -1).float() - 8
        w = (g * sz[..., :1] + sz[..., 1:]).reshape(layer.out_features, -1)
    y = F.linear(xb, w).bfloat16().float()
    return y if layer.bias is None else y + layer.bias


@pytest.mark.parametrize("cls", [Int8Linear, Q4Linear])
@pytest.mark.parametrize("out_features,bias", [(64, False), (40, True)])   # 40: q4 pads rows to 48
def test_quantized_linear_equals_dequantize_then_linear(cls, out_features, bias):
    torch.manual_seed(2)
    base = nn.Linear(96, out_features, bias=bias)
    layer = cls(base)
    with torch.inference_mode():
        for rows in (1, 3, PACKED_MAX_ROWS):                                # the packed kernel
            x = torch.randn(rows, 96)
            # within one bf16 rounding step (2^-8 relative) of the exact sum: the kernel may round differently
            torch.testing.assert_close(layer(x), _reference(layer, x), atol=1e-3, rtol=2 ** -8)
        x = torch.randn(2, PACKED_MAX_ROWS, 96)                             # many rows: dequantize + F.linear
        torch.testing.assert_close(layer(x), F.linear(x, layer.dequantize(), layer.bias), atol=1e-5, rtol=1e-5)
        # and the code stays close to the fp32 layer it came from
        assert (layer(x) - base(x)).abs().max() < (0.05 if cls is Int8Linear else 0.3)
    assert layer(torch.randn(1, 96)).shape == (1, out_features)


def test_quantize_model_rejects_bad_input():
    model = LlamaModel(LLAMA_PRESETS["llama-tiny"])
    with pytest.raises(QuantizeError, match="one of fp32, int8, q4"):
        quantize_model(model, "int4")
    with pytest.raises(QuantizeError, match="nn.Module"):
        quantize_model("smollm2", "int8")
    with pytest.raises(QuantizeError, match="no nn.Linear"):
        quantize_model(nn.Sequential(nn.ReLU()), "int8")
    assert quantize_model(model, "fp32") is model and not any(isinstance(m, QuantizedLinear) for m in model.modules())
    quantize_model(model, "int8")
    with pytest.raises(QuantizeError, match="already quantized") as e:
        quantize_model(model, "q4")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("weights", ["int8", "q4"])
def test_quantized_tiny_llama_decodes_with_cache_as_without(weights):
    """The one-token steps (packed kernel, general path) agree with full forwards of the same model."""
    torch.manual_seed(3)
    model = LlamaModel(LLAMA_PRESETS["llama-tiny"]).eval()
    ref = LlamaModel(LLAMA_PRESETS["llama-tiny"]).eval()
    ref.load_state_dict(model.state_dict())
    quantize_model(model, weights)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [] and model.quantized == weights
    assert weight_bytes_per_token(model) < weight_bytes_per_token(ref) / 3
    idx = torch.randint(0, 512, (1, 6))
    with torch.inference_mode():
        full = model(idx)                                                   # (1, 6, V) in one pass
        cache = model.new_cache(1)
        steps = torch.cat([model(idx[:, i:i + 1], cache) for i in range(6)], dim=1)
        torch.testing.assert_close(steps, full, atol=2e-3, rtol=2e-3)
        # and near the fp32 model: relative error of the logits (random weights, the worst case for 4 bits)
        rel = (full - ref(idx)).norm() / ref(idx).norm()
        assert rel < {"int8": 0.05, "q4": 0.3}[weights], rel


def test_quantized_gpt_model_close_to_fp32():
    """GPTModel (RowSplitLinear layers, biases, an odd-sized tied head) quantizes too."""
    torch.manual_seed(4)
    cfg = GPTConfig.preset("gpt-nano", vocab_size=1001)
    model, ref = GPTModel(cfg).eval(), GPTModel(cfg).eval()
    ref.load_state_dict(model.state_dict())
    quantize_model(model, "q4")
    assert isinstance(model.out_head, Q4Linear) and model.out_head.out_features == 1001
    idx = torch.randint(0, 1001, (1, 8))
    with torch.inference_mode():
        diff = (model(idx) - ref(idx)).abs().max()
        assert diff < 0.1
        out = generate(model, idx, 5)
    assert out.shape == (1, 13)


def test_generate_cli_takes_weights_option():
    from llm_companion.cli import generate as generate_cli

    p = argparse.ArgumentParser()
    generate_cli.add_arguments(p)
    assert p.parse_args(["hi", "--model", "smollm2"]).weights == "fp32"
    assert p.parse_args(["hi", "--model", "smollm2", "--weights", "q4"]).weights == "q4"
    with pytest.raises(SystemExit):
        p.parse_args(["hi", "--model", "smollm2", "--weights", "int4"])


# --------------------------------------------------------------------------------------------- SmolLM2
PROMPT = "The three primary colors are"
TEXT = ("The cat sat on the mat. It was a sunny day, and the children were playing in the park while their "
        "parents talked about the weather, the news and the price of bread.")


@pytest.fixture(scope="module")
def smollm2_pair():
    from llm_companion.inference.smollm2 import load_smollm2

    ref, tokenizer, _ = load_smollm2()
    quantized, _, _ = load_smollm2()
    return ref, quantize_model(quantized, "int8"), tokenizer


@pytest.mark.slow
def test_smollm2_int8_logits_near_fp32_and_greedy_agrees(smollm2_pair):
    ref, model, tokenizer = smollm2_pair
    idx = torch.tensor([tokenizer.encode(TEXT)])
    with torch.inference_mode():
        a, b = ref(idx), model(idx)                     # prefill path: dequantized weights, fp32 products
        # the largest of 36 × 49,152 logit differences (measured 2.2; logits span ~30): per-channel int8 of
        # weights that were Q4_1 in groups of 32 is the error's main source, bf16 activations a smaller one
        assert (a - b).abs().max() < 3.0
        # next-token choices along the text (teacher forcing): near ties may flip, most must not
        assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
        p = torch.tensor([tokenizer.encode(PROMPT)])    # decoding path: packed int8 kernel, bf16 activations
        a, b = ref(p), model(p)
        assert (a - b).abs().max() < 3.0                # measured 1.2-1.8 on prompts like this
        new_ref = generate(ref, p, 3)[0, p.shape[1]:]
        new_q = generate(model, p, 3)[0, p.shape[1]:]
    # greedy runs agree at first and may part at a near tie later (here after 3 tokens: "of the RGB" / ":")
    assert new_ref.tolist() == new_q.tolist(), (tokenizer.decode(new_ref.tolist()), tokenizer.decode(new_q.tolist()))
    assert weight_bytes_per_token(model) < weight_bytes_per_token(ref) / 3.5


def test_q4_layer_dequantizes_its_packed_codes_exactly():
    # the layer's in-place unpacking (what every prefill runs) equals dequantize_q4 of quantize_q4's codes
    torch.manual_seed(3)
    base = nn.Linear(96, 40)
    codes, scale, minimum = quantize_q4(base.weight)
    assert torch.equal(Q4Linear(base).dequantize(), dequantize_q4(codes, scale, minimum))
