"""The Llama model: its parts, GGUF loading, parity with transformers' LlamaForCausalLM, generation, the CLI.

Most tests run on a tiny random Llama written to a GGUF file in Q8_0/Q4_1/F32 (with a small BPE tokenizer);
the ``slow`` ones use the real SmolLM2-135M-Instruct file from the data layer.
"""
from __future__ import annotations

import copy
import io
import math
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch
import torch.nn.functional as F
from gguf_writers import save_llama_gguf, train_byte_bpe_metadata

from llm_companion import cli
from llm_companion.data.tokenizer import gguf_tokenizer
from llm_companion.inference.generation import generate
from llm_companion.models.gguf_checkpoint import load_llama_gguf
from llm_companion.models.kv_cache import KVCache
from llm_companion.models.llama import (
    GroupedQueryAttention,
    LlamaConfig,
    LlamaConfigError,
    LlamaModel,
    RMSNorm,
    SwiGLU,
    apply_rope,
    permute_qk,
    rope_tables,
    unpermute_qk,
    weight_bytes_per_token,
)

TINY_TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 + "def main():\n    return 42\n"
             + "Café 123 naïve " * 2)


def tiny_config(vocab_size: int) -> LlamaConfig:
    # 4 query heads share 2 key/value heads; emb 64 is two Q4_1/Q8_0 blocks of 32
    return LlamaConfig(vocab_size=vocab_size, context_length=96, emb_dim=64, n_heads=4, n_kv_heads=2,
                       n_layers=2, hidden_dim=96, rope_theta=10000.0)


def random_llama(cfg: LlamaConfig, seed: int = 0) -> LlamaModel:
    """Weights large enough that attention is far from uniform (so a RoPE mistake shows in the logits)."""
    torch.manual_seed(seed)
    model = LlamaModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(folder, file name, the fp32 model it was written from): embedding Q8_0, matrices Q4_1, norms F32."""
    meta = train_byte_bpe_metadata(TINY_TEXT, 40)
    model = random_llama(tiny_config(len(meta["tokenizer.ggml.tokens"])))
    folder = tmp_path_factory.mktemp("tiny-llama")
    save_llama_gguf(model, folder / "tiny.gguf", metadata=meta)
    return folder, "tiny.gguf", model


@pytest.fixture(scope="module")
def hf_tiny(tiny_gguf):
    transformers = pytest.importorskip("transformers")
    folder, name, _ = tiny_gguf
    return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


# --------------------------------------------------------------------------------------------- parts
def test_config_rejects_heads_that_do_not_group():
    with pytest.raises(LlamaConfigError, match="multiple of n_kv_heads"):
        LlamaConfig(emb_dim=64, n_heads=4, n_kv_heads=3)
    assert LlamaConfig().head_dim == 64 and LlamaConfig().kv_dim == 192


def test_rmsnorm_divides_by_root_mean_square_and_scales():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 5, 8) * 4 + 1
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (8,), norm.weight, 1e-5), atol=1e-5, rtol=1e-5)


def test_rope_rotation_keeps_lengths_and_position_zero_is_identity():
    cos, sin = rope_tables(16, 10, 100000.0)
    assert cos.shape == sin.shape == (10, 16)
    x = torch.randn(1, 2, 10, 16)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])                 # angle 0 at position 0
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))         # a rotation keeps lengths
    assert not torch.allclose(y[:, :, 1:], x[:, :, 1:])


def test_rope_score_depends_only_on_the_offset():
    torch.manual_seed(0)
    cos, sin = rope_tables(32, 64, 100000.0)
    q, k = torch.randn(32), torch.randn(32)

    def score(m: int, n: int) -> float:
        qm = apply_rope(q.view(1, 1, 1, 32), cos[m:m + 1], sin[m:m + 1])
        kn = apply_rope(k.view(1, 1, 1, 32), cos[n:n + 1], sin[n:n + 1])
        return float((qm * kn).sum())

    for offset in (0, 3, 17):
        scores = [score(n + offset, n) for n in (0, 5, 20, 40)]
        assert max(scores) - min(scores) < 1e-4, (offset, scores)
    assert abs(score(3, 0) - score(17, 0)) > 1e-2  # and the offset does matter


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.arange(8 * 6, dtype=torch.float32).view(8, 6)  # 2 heads of 4 dims
    p = permute_qk(w, 2)
    # llama.cpp interleaves each head's halves: rows [0, 2, 1, 3] of head 0
    torch.testing.assert_close(p[:4], w[[0, 2, 1, 3]])
    torch.testing.assert_close(unpermute_qk(p, 2), w)


def test_swiglu_is_down_of_silu_gate_times_up():
    cfg = LlamaConfig(vocab_size=10, context_length=8, emb_dim=16, n_heads=2, n_kv_heads=1, n_layers=1,
                      hidden_dim=24)
    torch.manual_seed(0)
    ff = SwiGLU(cfg)
    x = torch.randn(2, 3, 16)
    g, u = x @ ff.gate.weight.T, x @ ff.up.weight.T
    torch.testing.assert_close(ff(x), (g * torch.sigmoid(g) * u) @ ff.down.weight.T)


def test_grouped_query_attention_equals_multi_head_with_shared_keys():
    """GQA with 2 key/value heads = ordinary attention whose heads 0,1 and 2,3 use identical keys/values."""
    cfg = LlamaConfig(vocab_size=10, context_length=16, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=1,
                      hidden_dim=48)
    torch.manual_seed(0)
    attn = GroupedQueryAttention(cfg)
    x = torch.randn(2, 7, 32)
    cos, sin = rope_tables(cfg.head_dim, 7, cfg.rope_theta)
    q = apply_rope((x @ attn.q.weight.T).view(2, 7, 4, 8).transpose(1, 2), cos, sin)
    k = apply_rope((x @ attn.k.weight.T).view(2, 7, 2, 8).transpose(1, 2), cos, sin)
    v = (x @ attn.v.weight.T).view(2, 7, 2, 8).transpose(1, 2)
    k, v = k[:, [0, 0, 1, 1]], v[:, [0, 0, 1, 1]]                         # each kv head serves two queries
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 32) @ attn.o.weight.T
    torch.testing.assert_close(attn(x, cos, sin), out, atol=1e-5, rtol=1e-5)


def test_kv_cache_gives_the_logits_of_a_full_pass_and_grows():
    model = random_llama(tiny_config(50))
    ids = torch.randint(0, 50, (2, 40))
    full = model(ids)
    cache = KVCache(model.cfg, 2, initial_len=4)  # start tiny so the buffer must grow several times
    pieces = [model(ids[:, a:b], cache) for a, b in ((0, 13), (13, 14), (14, 31), (31, 40))]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 40 and cache.capacity >= 40
    assert cache.nbytes_per_token() == 2 * 2 * 2 * 2 * 16 * 4  # 2·layers·batch·kv heads·head_dim·fp32
    last = model(ids[:, :25], model.new_cache(2), last_only=True)
    torch.testing.assert_close(last, full[:, 24:25], atol=1e-5, rtol=1e-5)


# the compiled decoding step (inference/fast.py) against this model: tests/test_decode.py


def test_context_overflow_is_a_clear_error():
    model = random_llama(tiny_config(50))
    with pytest.raises(ValueError, match="context_length is 96"):
        model(torch.zeros(1, 97, dtype=torch.long))


# --------------------------------------------------------------------------------------------- GGUF
def test_gguf_roundtrip_in_f32_is_exact(tmp_path):
    model = random_llama(tiny_config(50))
    save_llama_gguf(model, tmp_path / "f32.gguf", matrix_type="F32", embedding_type="F32")
    back = load_llama_gguf(tmp_path / "f32.gguf")
    assert back.cfg == model.cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    assert back.out_head.weight is back.tok_emb.weight  # tied, as the file has no output.weight


def test_quantized_file_changes_the_logits_only_a_little(tiny_gguf):
    folder, name, fp32 = tiny_gguf
    model = load_llama_gguf(folder / name)
    ids = torch.randint(0, fp32.cfg.vocab_size, (1, 30))
    with torch.no_grad():
        ref, q = fp32(ids), model(ids)
    assert 0 < (ref - q).abs().max() < 0.5 * ref.abs().max()
    assert weight_bytes_per_token(model) == 4 * model.num_parameters()  # fp32, the tied embedding read as the head


def test_logits_match_transformers_on_a_quantized_file(tiny_gguf, hf_tiny):
    folder, name, fp32 = tiny_gguf
    model = load_llama_gguf(folder / name)
    torch.manual_seed(1)
    ids = torch.randint(0, fp32.cfg.vocab_size, (2, 40))
    with torch.no_grad():
        ours, theirs = model(ids), hf_tiny(ids).logits
    assert (ours - theirs).abs().max() < 1e-4


def test_half_split_rope_on_permuted_weights_is_caught(tiny_gguf, hf_tiny):
    """The classic bug: llama.cpp's Q/K row order with rotate-halves RoPE. The logits are far off."""
    folder, name, fp32 = tiny_gguf
    wrong = load_llama_gguf(folder / name, unpermute=False)
    ids = torch.randint(0, fp32.cfg.vocab_size, (1, 40))
    with torch.no_grad():
        theirs = hf_tiny(ids).logits
        error = (wrong(ids) - theirs).abs().max()
    assert error > 0.2 * theirs.abs().max()


def test_greedy_tokens_match_transformers(tiny_gguf, hf_tiny):
    folder, name, fp32 = tiny_gguf
    model = load_llama_gguf(folder / name)
    prompt = torch.randint(0, fp32.cfg.vocab_size, (1, 12))
    ours = generate(model, prompt, 20)
    theirs = hf_tiny.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20,
                              pad_token_id=0, eos_token_id=None)
    assert ours.tolist() == theirs.tolist()


def test_sampling_is_reproducible_with_a_seed(tiny_gguf):
    folder, name, _ = tiny_gguf
    model = load_llama_gguf(folder / name)
    prompt = torch.tensor([[5, 6, 7]])
    runs = [generate(model, prompt, 15, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(3))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    cached = generate(model, prompt, 15, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    uncached = generate(model, prompt, 15, temperature=1.0, top_k=5, use_cache=False,
                        generator=torch.Generator().manual_seed(3))
    assert torch.equal(cached, uncached)


# --------------------------------------------------------------------------------------------- CLI
def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_generate_cli_prints_the_greedy_continuation_of_a_gguf_model(tiny_gguf):
    folder, name, _ = tiny_gguf
    rc, out, _ = run_cli(["generate", "--model", str(folder / name), "--greedy", "--max-new-tokens", "8",
                          "The quick"])
    assert rc == 0
    tok = gguf_tokenizer(folder / name)
    model = load_llama_gguf(folder / name)
    ids = generate(model, torch.tensor([tok.encode("The quick")]), 8, eos_id=tok.eot_token)
    assert out == tok.decode(ids[0, 2:].tolist()) + "\n"
    assert "dequantizing" not in out  # progress goes to stderr, the text alone to stdout


def test_generate_cli_runs_a_saved_gpt_folder(tmp_path):
    from llm_companion import GPTConfig, GPTModel, save_model
    from llm_companion.data.tokenizer import gpt2_tokenizer

    torch.manual_seed(0)
    gpt = GPTModel(GPTConfig(vocab_size=50257, context_length=32, emb_dim=32, n_heads=2, n_layers=1)).eval()
    save_model(gpt, tmp_path / "gpt")
    rc, out, _ = run_cli(["generate", "--model", str(tmp_path / "gpt"), "--greedy", "--max-new-tokens", "5",
                          "Hello"])
    tok = gpt2_tokenizer()
    ids = generate(gpt, torch.tensor([tok.encode("Hello")]), 5, eos_id=tok.eot_token)
    assert rc == 0 and out == tok.decode(ids[0, 1:].tolist()) + "\n"


def test_generate_cli_names_a_bad_model_in_one_line(tmp_path):
    rc, out, err = run_cli(["generate", "--model", str(tmp_path / "nowhere"), "hi"])
    assert rc == 2 and out == ""
    assert "nowhere" in err and "smollm2" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(["generate", "--model", str(tmp_path / "empty"), "hi"])
    assert rc == 2 and "not a model folder" in err
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x00" * 40)
    rc, _, err = run_cli(["generate", "--model", str(tmp_path / "bad.gguf"), "hi"])
    assert rc == 2 and "bad.gguf" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------- the real file
@pytest.fixture(scope="module")
def smollm2():
    from llm_companion.inference.smollm2 import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="module")
def hf_smollm2(smollm2):
    transformers = pytest.importorskip("transformers")
    _, _, info = smollm2
    return transformers.AutoModelForCausalLM.from_pretrained(info.path.parent, gguf_file=info.path.name,
                                                             dtype=torch.float32).eval()


@pytest.mark.slow
def test_smollm2_config_facts(smollm2):
    model, tok, info = smollm2
    assert model.cfg == LlamaConfig(vocab_size=49152, context_length=8192, emb_dim=576, n_heads=9, n_kv_heads=3,
                                    n_layers=30, hidden_dim=1536, rope_theta=100000.0, norm_eps=1e-5,
                                    tie_weights=True)
    assert model.out_head.weight is model.tok_emb.weight
    assert info.quantization == "Q4_1" and model.num_parameters() == 134_515_008
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert info.system_prompt == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.mark.slow
def test_smollm2_logits_and_greedy_answer_match_transformers(smollm2, hf_smollm2):
    from llm_companion.inference.smollm2 import encode_chat

    model, tok, info = smollm2
    ids = torch.tensor([encode_chat(tok, "What is the capital of France?")])      # 37 tokens
    assert ids.shape[1] >= 30
    with torch.no_grad():
        theirs = hf_smollm2(ids).logits
        assert (model(ids) - theirs).abs().max() < 1e-4
        wrong = copy.deepcopy(model)
        for blk in wrong.blocks:  # the same file with llama.cpp's Q/K order kept: the classic bug
            blk.attn.q.weight.copy_(permute_qk(blk.attn.q.weight, 9))
            blk.attn.k.weight.copy_(permute_qk(blk.attn.k.weight, 3))
        assert (wrong(ids) - theirs).abs().max() > 5.0
    ours = generate(model, ids, 12, eos_id=tok.eos_token_id)
    hf = hf_smollm2.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=2)
    assert ours.tolist() == hf.tolist()
    assert "Paris" in tok.decode(ours[0, ids.shape[1]:].tolist())


@pytest.mark.slow
def test_chat_cli_answers_the_france_question_with_paris():
    rc, out, _ = run_cli(["chat", "--model", "smollm2", "--once", "What is the capital of France?",
                          "--max-new-tokens", "20"])
    assert rc == 0 and "Paris" in out and "<|im_end|>" not in out
