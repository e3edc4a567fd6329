"""Hugging Face GPT-2 → GPTModel conversion."""
import pytest
import torch
from conftest import ODD, hf_gpt2
from transformers import GPT2Config

from llm_companion import GPTConfig, GPTModel
from llm_companion.models.hf_convert import (
    ConversionError,
    config_from_hf,
    config_from_state_dict,
    load_converted,
    merge_qkv,
    model_from_hf_state_dict,
    split_qkv,
    state_dict_from_hf,
)


def test_config_from_hf_reads_gpt2_fields():
    d = GPT2Config().to_dict()
    cfg = config_from_hf(d)
    assert cfg == GPTConfig.preset("gpt2-small")
    medium = config_from_hf({**d, "n_embd": 1024, "n_layer": 24, "n_head": 16, "tie_word_embeddings": False,
                             "layer_norm_epsilon": 1e-6})
    assert (medium.emb_dim, medium.n_layers, medium.n_heads, medium.tie_weights, medium.ln_eps) == \
        (1024, 24, 16, False, 1e-6)
    assert config_from_hf(d, drop_rate=0.1).drop_rate == 0.1


@pytest.mark.parametrize("bad", [{"activation_function": "relu"}, {"scale_attn_by_inverse_layer_idx": True},
                                 {"reorder_and_upcast_attn": True}, {"scale_attn_weights": False}])
def test_config_from_hf_rejects_unsupported_variants(bad):
    with pytest.raises(ConversionError):
        config_from_hf({**GPT2Config().to_dict(), **bad})


def test_config_from_hf_names_missing_field():
    with pytest.raises(ConversionError, match="n_embd"):
        config_from_hf({"vocab_size": 10, "n_positions": 8})


def test_state_dict_from_hf_renames_transposes_and_drops_buffers():
    hf = hf_gpt2(ODD).state_dict()
    hf["transformer.h.0.attn.bias"] = torch.ones(1, 1, 77, 77)  # old transformers versions saved this buffer
    hf["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    ours = state_dict_from_hf(hf)
    assert set(ours) == set(GPTModel(ODD).state_dict())
    assert torch.equal(ours["blocks.2.attn.qkv.weight"], hf["transformer.h.2.attn.c_attn.weight"].t())
    assert ours["blocks.0.ff.fc.weight"].shape == (4 * 192, 192)
    assert ours["blocks.0.ff.proj.weight"].shape == (192, 4 * 192)


def test_prefix_is_optional():
    hf = hf_gpt2(ODD).state_dict()
    bare = {k.removeprefix("transformer."): v for k, v in hf.items() if k != "lm_head.weight"}
    a, b = state_dict_from_hf(hf), state_dict_from_hf(bare)
    assert set(a) - set(b) == {"out_head.weight"}
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_unknown_key_is_named():
    with pytest.raises(ConversionError, match="h.0.attn.rotary"):
        state_dict_from_hf({"transformer.h.0.attn.rotary": torch.zeros(1)})


def test_converted_model_matches_hf_without_config_and_tied_head_is_optional():
    hf = hf_gpt2(ODD.replace(n_heads=3))  # 192/3 = 64-dim heads, as config inference assumes
    sd = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    model = model_from_hf_state_dict(sd)
    assert model.cfg == ODD.replace(n_heads=3)
    assert model.out_head.weight is model.tok_emb.weight
    x = torch.randint(0, ODD.vocab_size, (2, 20))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4


def test_untied_head_is_detected_and_loaded():
    hf = hf_gpt2(ODD.replace(tie_weights=False))
    cfg = config_from_state_dict(hf.state_dict(), n_heads=6)
    assert cfg == ODD.replace(tie_weights=False)
    model = model_from_hf_state_dict(hf.state_dict(), cfg)
    assert torch.equal(model.out_head.weight, hf.lm_head.weight)
    assert not torch.equal(model.out_head.weight, model.tok_emb.weight)
    with pytest.raises(ConversionError, match="tie_weights"):
        model_from_hf_state_dict(hf.state_dict(), ODD)


def test_shape_mismatch_names_the_tensor():
    sd = hf_gpt2(ODD).state_dict()
    sd["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(192, 100)
    with pytest.raises(ConversionError, match=r"blocks\.1\.ff\.fc\.weight"):
        model_from_hf_state_dict(sd, ODD)


def test_missing_and_extra_layers_are_reported():
    sd = hf_gpt2(ODD).state_dict()
    with pytest.raises(ConversionError, match="lacks"):
        model_from_hf_state_dict(sd, ODD.replace(n_layers=4))
    with pytest.raises(ConversionError, match=r"blocks\.2\.norm2\.bias"):
        model_from_hf_state_dict({k: v for k, v in sd.items() if "h.2.ln_2.bias" not in k}, ODD)
    with pytest.raises(ConversionError, match="model lacks"):
        model_from_hf_state_dict(sd, ODD.replace(n_layers=2))


def test_conversion_leaves_global_rng_untouched():
    sd = hf_gpt2(ODD).state_dict()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model_from_hf_state_dict(sd, ODD)
    assert torch.equal(torch.rand(3), expected)


def test_split_and_merge_qkv_give_separate_projections():
    torch.manual_seed(0)
    model = GPTModel(ODD)
    attn = model.blocks[0].attn
    w_q, w_k, w_v = split_qkv(attn.qkv.weight, ODD.emb_dim)
    b_q, _, _ = split_qkv(attn.qkv.bias)
    x = torch.randn(2, 5, ODD.emb_dim)
    q_fused = attn.qkv(x)[..., :ODD.emb_dim]
    assert torch.allclose(x @ w_q.T + b_q, q_fused, atol=1e-6)
    assert torch.equal(merge_qkv(w_q, w_k, w_v), attn.qkv.weight)
    with pytest.raises(ConversionError):
        split_qkv(torch.zeros(10, 4))


def test_load_converted_roundtrips_our_own_state_dict():
    torch.manual_seed(1)
    src, dst = GPTModel(ODD), GPTModel(ODD)
    load_converted(dst, src.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
