"""GPTModel and MultiHeadAttention: parity with Hugging Face GPT-2, KV cache, SDPA vs explicit path."""
import pytest
import torch
import torch.nn.functional as F
from conftest import ODD, hf_config, hf_gpt2
from transformers import GPT2LMHeadModel

from llm_companion import GPTConfig, GPTModel
from llm_companion.models.attention import causal_mask
from llm_companion.models.config import ConfigError
from llm_companion.models.hf_convert import model_from_hf_state_dict

CONFIGS = {
    "odd": ODD,  # 3 layers, 6 heads of 32, emb 192, context 77, vocab 101
    "untied": ODD.replace(tie_weights=False, n_heads=4),
    "one-head": GPTConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=1, n_layers=1, ln_eps=1e-6),
    "nano": GPTConfig.preset("gpt-nano", vocab_size=257),
}


def pair(cfg, seed=0, attn="eager"):
    hf = hf_gpt2(cfg, seed, attn)
    return model_from_hf_state_dict(hf.state_dict(), cfg), hf


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_match_hf(name, attn):
    cfg = CONFIGS[name]
    ours, hf = pair(cfg, seed=len(name), attn=attn)
    x = torch.randint(0, cfg.vocab_size, (3, cfg.context_length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(x).logits
        for use_sdpa in (True, False):
            for block in ours.blocks:
                block.attn.use_sdpa = use_sdpa
            out = ours(x)
            assert out.shape == (3, cfg.context_length, cfg.vocab_size)
            assert (out - ref).abs().max().item() <= 1e-4
    assert ref.abs().max() > 0.1  # the comparison is not between two near-zero tensors


def test_gradients_match_hf():
    ours, hf = pair(ODD, seed=3)
    ours.train(), hf.train()
    x = torch.randint(0, ODD.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    y = torch.roll(x, -1, dims=1)
    F.cross_entropy(ours(x).flatten(0, 1), y.flatten()).backward()
    F.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten()).backward()
    g_ours = ours.blocks[1].attn.qkv.weight.grad
    g_hf = hf.transformer.h[1].attn.c_attn.weight.grad.t()
    assert torch.allclose(g_ours, g_hf, atol=1e-6, rtol=1e-4)
    assert torch.allclose(ours.tok_emb.weight.grad, hf.transformer.wte.weight.grad, atol=1e-6, rtol=1e-4)


def test_parameter_counts_match_hf_for_gpt2_small():
    for tied, expected in ((True, 124_439_808), (False, 163_037_184)):
        cfg = GPTConfig.preset("gpt2-small", tie_weights=tied)
        with torch.device("meta"):  # shapes only: instant and no memory
            ours = GPTModel(cfg)
            hf = GPT2LMHeadModel(hf_config(cfg))
        hf_count = sum(p.numel() for p in hf.parameters())
        assert ours.num_parameters() == hf_count == expected


def test_tied_head_shares_storage_and_untied_does_not():
    tied, untied = GPTModel(ODD), GPTModel(ODD.replace(tie_weights=False))
    assert tied.out_head.weight is tied.tok_emb.weight
    assert untied.out_head.weight is not untied.tok_emb.weight
    extra = ODD.vocab_size * ODD.emb_dim
    assert untied.num_parameters() - tied.num_parameters() == extra
    assert tied.num_parameters(exclude_tied=False) == untied.num_parameters()


def test_config_validation():
    with pytest.raises(ConfigError, match="divisible"):
        GPTConfig(emb_dim=100, n_heads=3)
    with pytest.raises(ConfigError, match="n_layers"):
        GPTConfig(n_layers=0)
    with pytest.raises(ConfigError, match="drop_rate"):
        GPTConfig(drop_rate=1.0)
    with pytest.raises(ConfigError, match="ln_eps"):
        GPTConfig(ln_eps=0.0)
    with pytest.raises(ConfigError, match="unknown preset"):
        GPTConfig.preset("gpt5")
    cfg = GPTConfig.preset("gpt2-medium", context_length=256)
    assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads, cfg.context_length, cfg.head_dim) == (1024, 24, 16, 256, 64)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg


def test_forward_longer_than_context_raises():
    model = GPTModel(ODD).eval()
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, ODD.context_length + 1, dtype=torch.long))
    cache = model.new_cache(1)
    model(torch.zeros(1, ODD.context_length - 2, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 3, dtype=torch.long), cache)


def test_last_only_equals_last_row():
    torch.manual_seed(0)
    model = GPTModel(ODD).eval()
    x = torch.randint(0, ODD.vocab_size, (2, 30))
    with torch.no_grad():
        full, last = model(x), model(x, last_only=True)
    assert last.shape == (2, 1, ODD.vocab_size)
    assert torch.allclose(full[:, -1:], last, atol=1e-6)


@pytest.mark.parametrize("chunks", [[30], [1] * 12, [10, 1, 1, 7, 11]])
def test_cached_chunks_equal_full_forward(chunks):
    torch.manual_seed(0)
    model = GPTModel(ODD).eval()
    x = torch.randint(0, ODD.vocab_size, (2, sum(chunks)))
    with torch.no_grad():
        full = model(x)
        cache, pieces, start = model.new_cache(2), [], 0
        for n in chunks:
            pieces.append(model(x[:, start:start + n], cache))
            start += n
    assert cache.length == x.shape[1]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("past,new", [(0, 9), (0, 1), (7, 1), (7, 5)])
def test_sdpa_path_equals_explicit_path(past, new):
    torch.manual_seed(0)
    model = GPTModel(ODD).eval()
    x = torch.randint(0, ODD.vocab_size, (2, past + new))

    def run(use_sdpa):
        for block in model.blocks:
            block.attn.use_sdpa = use_sdpa
        with torch.no_grad():
            if past == 0:
                return model(x)
            cache = model.new_cache(2)
            model(x[:, :past], cache)
            return model(x[:, past:], cache)  # prefill with past > 0 uses an explicit offset mask

    assert (run(True) - run(False)).abs().max().item() <= 1e-5


def test_attention_weights_are_causal_and_normalised():
    torch.manual_seed(0)
    attn = GPTModel(ODD).blocks[0].attn.eval()
    x = torch.randn(2, 6, ODD.emb_dim)
    out, w = attn(x, return_weights=True)
    assert w.shape == (2, ODD.n_heads, 6, 6)
    assert torch.allclose(w.sum(-1), torch.ones(2, ODD.n_heads, 6))
    assert torch.all(w.triu(diagonal=1) == 0)
    assert torch.allclose(out, attn(x), atol=1e-6)  # the fast path computes the same output


def test_causal_mask_with_offset():
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_dropout_active_only_in_training():
    torch.manual_seed(0)
    model = GPTModel(ODD.replace(drop_rate=0.5))
    x = torch.randint(0, ODD.vocab_size, (1, 10))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_same_seed_same_init():
    torch.manual_seed(5)
    a = GPTModel(ODD)
    torch.manual_seed(5)
    b = GPTModel(ODD)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fast_logits_equal_the_model_with_and_without_a_cache():
    from llm_companion.inference.fast import decoder

    torch.manual_seed(0)
    model = GPTModel(ODD).eval()
    x = torch.randint(0, ODD.vocab_size, (2, 13))
    step = decoder(model)
    with torch.no_grad():
        torch.testing.assert_close(step(x, None), model(x)[:, -1:], atol=1e-5, rtol=0)
        plain_cache, fast_cache = model.new_cache(2), model.new_cache(2)
        for chunk in (x[:, :9], x[:, 9:10], x[:, 10:13], x[:, 12:13]):  # prefill, one-token steps, a chunk
            want = model(chunk, plain_cache)[:, -1:]
            torch.testing.assert_close(step(chunk, fast_cache), want, atol=1e-5, rtol=0)
            assert fast_cache.length == plain_cache.length
        n = plain_cache.length
        torch.testing.assert_close(fast_cache.k[:, :, :, :n], plain_cache.k[:, :, :, :n], atol=1e-5, rtol=0)


def test_plot_attention_draws_one_panel_per_matrix():
    from llm_companion.plots import plot_attention

    w = torch.softmax(torch.randn(3, 5, 5).masked_fill(~causal_mask(5, 5), float("-inf")), dim=-1)
    fig = plot_attention(w, list("abcde"), titles=["h0", "h1", "h2"])
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["h0", "h1", "h2"]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == list("abcde")
    assert len(panels[0].texts) == 25  # every cell annotated (small matrix)
    fig = plot_attention(torch.zeros(4, 4).masked_fill(~causal_mask(4, 4), float("-inf")), list("wxyz"))
    assert "−∞" in {t.get_text() for t in fig.axes[0].texts}


def test_last_only_with_cache_fills_the_same_cache_and_weights_match():
    torch.manual_seed(0)
    model = GPTModel(ODD).eval()
    x = torch.randint(0, ODD.vocab_size, (2, 12))
    with torch.no_grad():
        full_cache, last_cache = model.new_cache(2), model.new_cache(2)
        full = model(x, full_cache)
        last = model(x, last_cache, last_only=True)
        assert torch.allclose(last, full[:, -1:], atol=1e-5)
        assert torch.allclose(last_cache.k[:, :, :, :12], full_cache.k[:, :, :, :12], atol=1e-6)
        assert torch.allclose(last_cache.v[:, :, :, :12], full_cache.v[:, :, :, :12], atol=1e-6)
        nxt = torch.randint(0, ODD.vocab_size, (2, 1))  # decoding continues identically from either cache
        assert torch.allclose(model(nxt, last_cache), model(nxt, full_cache), atol=1e-5)
        cache, chunk = model.new_cache(2), torch.randint(0, ODD.vocab_size, (2, 3))
        model(x, cache)  # a chunk of three after the cached tokens: the causal mask is offset by 12
        torch.testing.assert_close(model(chunk, cache), model(torch.cat([x, chunk], 1))[:, -3:], atol=1e-5,
                                   rtol=0)
