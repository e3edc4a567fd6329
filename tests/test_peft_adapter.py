"""Adapters in peft's on-disk format: peft itself is the oracle, both ways, and every CLI loads them.

A tiny random ``LlamaForCausalLM`` (transformers) is converted to our ``LlamaModel`` (``hf_convert``); an
adapter we save must give, in ``peft.PeftModel.from_pretrained``, the logits our model gives, and an adapter
peft saves must give in ours the logits peft gives. The same for GPT-2 (``GPTModel`` ↔ ``GPT2LMHeadModel``).
"""
from __future__ import annotations

import json

import pytest
import torch

from llm_companion import GPTConfig, GPTModel, LlamaConfig, LlamaModel, apply_lora
from llm_companion.finetune.adapters import (
    ADAPTER_FILE,
    CONFIG_FILE,
    META,
    load_adapter,
    read_adapter_meta,
    save_adapter,
)
from llm_companion.finetune.lora import LoRAError, has_lora, lora_layers, save_lora
from llm_companion.models.hf_convert import (
    ConversionError,
    config_from_hf,
    hf_module_name,
    llama_config_from_hf,
    llama_from_hf_state_dict,
    model_from_hf_state_dict,
    our_module_name,
)

ATOL = 1e-5


def hf_llama(tie: bool = True, seed: int = 0):
    """A tiny random transformers Llama (odd sizes: 3 layers, 6 query / 2 key-value heads of 8, vocab 61)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=tie,
                                   bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # norms of 1 would hide a swapped attn_norm / ffn_norm
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def tiny_llama(vocab: int = 61, hidden: int = 80, seed: int = 0) -> LlamaModel:
    torch.manual_seed(seed)
    return LlamaModel(LlamaConfig(vocab_size=vocab, context_length=32, emb_dim=48, n_heads=6, n_kv_heads=2,
                                  n_layers=2, hidden_dim=hidden)).eval()


def ours_from(hf) -> torch.nn.Module:
    return llama_from_hf_state_dict(hf.state_dict(), llama_config_from_hf(hf.config.to_dict()))


def random_b(model, seed: int = 5, std: float = 0.3) -> None:
    """B starts at zero, which would hide a wrong A/B layout or scaling: give every B random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)


def ids(vocab: int = 61, seed: int = 7) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 13), generator=torch.Generator().manual_seed(seed))


def logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


# --------------------------------------------------------------------------------------------- conversion
@pytest.mark.slow  # importing transformers takes seconds
@pytest.mark.parametrize("tie", [True, False])
def test_hf_llama_converts_to_our_model_with_equal_logits(tie):
    hf = hf_llama(tie)
    ours = ours_from(hf)
    assert ours.cfg.tie_weights is tie and ours.cfg.n_kv_heads == 2 and ours.cfg.rope_theta == 100000.0
    torch.testing.assert_close(logits(ours, ids()), logits(hf, ids()), atol=ATOL, rtol=0)


def test_llama_config_refuses_what_our_model_does_not_compute():
    base = dict(vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                max_position_embeddings=64)
    assert llama_config_from_hf(base).n_kv_heads == 6      # no num_key_value_heads: plain multi-head attention
    for extra, message in [({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "RoPE scaling"),
                           ({"attention_bias": True}, "no biases"), ({"head_dim": 16}, "head_dim 16"),
                           ({"hidden_act": "gelu"}, "silu")]:
        with pytest.raises(ConversionError, match=message):
            llama_config_from_hf({**base, **extra})
    with pytest.raises(ConversionError, match="no 'vocab_size'"):
        llama_config_from_hf({k: v for k, v in base.items() if k != "vocab_size"})


def test_module_names_map_both_ways():
    pairs = {"llama": [("blocks.2.attn.q", "model.layers.2.self_attn.q_proj"), ("blocks.0.ffn.down",
                       "model.layers.0.mlp.down_proj"), ("out_head", "lm_head")],
             "gpt2": [("blocks.1.attn.qkv", "transformer.h.1.attn.c_attn"), ("blocks.1.attn.proj",
                      "transformer.h.1.attn.c_proj"), ("blocks.0.ff.proj", "transformer.h.0.mlp.c_proj")]}
    for arch, names in pairs.items():
        for ours, theirs in names:
            assert hf_module_name(ours, arch) == theirs and our_module_name(theirs, arch) == ours
    assert hf_module_name("blocks.0.attn", "llama") is None and our_module_name("model.rotary", "llama") is None


# --------------------------------------------------------------------------------------------- peft oracle
@pytest.mark.slow  # importing transformers and peft takes seconds
@pytest.mark.parametrize("targets", [None, ["q", "v"], ["blocks.1.*"], ["q", "k", "v", "o", "gate", "up", "down"]])
def test_our_adapter_loads_in_peft_with_equal_logits(tmp_path, targets):
    peft = pytest.importorskip("peft")
    hf = hf_llama()
    x = ids()
    base = logits(hf, x)
    ours = apply_lora(ours_from(hf), rank=4, alpha=8, targets=targets)
    random_b(ours)
    want = logits(ours, x)
    out = save_adapter(ours, tmp_path / "ad", {"base_model": "tiny llama", "method": "test", "steps": 3,
                                              "base_model_name_or_path": "tiny/llama"})
    assert sorted(p.name for p in out.iterdir()) == sorted([ADAPTER_FILE, CONFIG_FILE, META])
    modes = {(out / f).stat().st_mode & 0o777 for f in (ADAPTER_FILE, CONFIG_FILE, META)}
    assert len(modes) == 1                              # the matrices are no more private than the config
    config = peft.LoraConfig.from_pretrained(str(out))
    assert (config.peft_type, config.task_type, config.r, config.lora_alpha) == ("LORA", "CAUSAL_LM", 4, 8)
    assert config.base_model_name_or_path == "tiny/llama" and config.bias == "none" and not config.fan_in_fan_out
    tuned = peft.PeftModel.from_pretrained(hf, str(out)).eval()
    assert len([n for n, _ in tuned.named_modules() if n.endswith(".lora_A")]) == len(lora_layers(ours))
    torch.testing.assert_close(logits(tuned, x), want, atol=ATOL, rtol=0)
    assert (want - base).abs().max() > 0.1            # the adapter changes the function: the check can fail
    meta = read_adapter_meta(out)
    assert meta["method"] == "test" and meta["steps"] == 3 and meta["targets"] == targets and meta["rank"] == 4


def test_target_modules_are_hugging_face_names_as_short_as_exact(tmp_path):
    def written(model, **kw):
        save_adapter(apply_lora(model, rank=2, alpha=4, **kw), tmp_path / "ad", {"base_model": "tiny"})
        return json.loads((tmp_path / "ad" / CONFIG_FILE).read_text())["target_modules"]

    assert written(tiny_llama(), targets=["q", "v"]) == ["q_proj", "v_proj"]
    assert written(tiny_llama(), targets=["blocks.1.attn.q"]) == ["model.layers.1.self_attn.q_proj"]
    gpt = GPTModel(GPTConfig(vocab_size=61, context_length=16, emb_dim=32, n_heads=2, n_layers=2))
    assert written(gpt, targets=["attn.proj"]) == ["attn.c_proj"]    # "c_proj" alone would take the MLP's too
    layer_keys = json.loads((tmp_path / "ad" / CONFIG_FILE).read_text())
    assert layer_keys["fan_in_fan_out"] is True                        # GPT-2's Conv1D layout, as peft expects


@pytest.mark.slow
@pytest.mark.parametrize("rslora", [False, True])
def test_an_adapter_peft_saved_loads_into_ours_with_equal_logits(tmp_path, rslora):
    peft = pytest.importorskip("peft")
    hf = hf_llama(tie=True, seed=1)
    ours = ours_from(hf)
    x = ids()
    config = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, use_rslora=rslora, task_type="CAUSAL_LM",
                             target_modules=["q_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "lm_head"])
    tuned = peft.get_peft_model(hf, config)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    tuned.save_pretrained(str(tmp_path / "peft"))      # also stores a copy of the tied lm_head's base weight
    tuned.eval()
    load_adapter(ours, tmp_path / "peft")
    assert len(lora_layers(ours)) == 3 * 5 + 1
    torch.testing.assert_close(logits(ours, x), logits(tuned, x), atol=ATOL, rtol=0)
    meta = read_adapter_meta(tmp_path / "peft")
    assert meta["format"] == "peft" and meta["rank"] == 4 and "lm_head" in meta["targets"]
    save_adapter(ours, tmp_path / "again", {"base_model": "tiny"})   # and it saves again, loading the same
    again = load_adapter(ours_from(hf_llama(tie=True, seed=1)), tmp_path / "again")
    torch.testing.assert_close(logits(again, x), logits(tuned, x), atol=ATOL, rtol=0)


@pytest.mark.slow
def test_gpt2_adapters_use_gpt2_names_and_load_in_peft(tmp_path):
    peft = pytest.importorskip("peft")
    from conftest import ODD, hf_gpt2

    hf = hf_gpt2(ODD)
    ours = apply_lora(model_from_hf_state_dict(hf.state_dict(), config_from_hf(hf.config.to_dict())),
                      rank=2, alpha=4, targets=["qkv", "attn.proj", "ff.fc", "out_head"])
    random_b(ours)
    x = ids(ODD.vocab_size)
    want = logits(ours, x)
    save_adapter(ours, tmp_path / "ad", {"base_model": "odd GPT-2"})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ad" / ADAPTER_FILE), "pt") as f:
        assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in f.keys()
    tuned = peft.PeftModel.from_pretrained(hf, str(tmp_path / "ad")).eval()
    torch.testing.assert_close(logits(tuned, x), want, atol=ATOL, rtol=0)
    fresh = load_adapter(model_from_hf_state_dict(hf_gpt2(ODD).state_dict(), config_from_hf(hf.config.to_dict())),
                         tmp_path / "ad")
    torch.testing.assert_close(logits(fresh, x), want, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------- old format, errors
def test_a_folder_in_the_earlier_format_is_still_read(tmp_path):
    model = apply_lora(tiny_llama(), rank=4, alpha=8, targets=["q", "v"])
    random_b(model)
    old = tmp_path / "old"
    old.mkdir()
    save_lora(model, old / "adapter.safetensors")
    (old / "adapter.json").write_text(json.dumps({"base_model": "tiny", "method": "dpo", "rank": 4, "alpha": 8,
                                                  "format": "llm_companion.adapter/1"}))
    fresh = load_adapter(tiny_llama(), old)
    torch.testing.assert_close(logits(fresh, ids()), logits(model, ids()), atol=0, rtol=0)
    assert read_adapter_meta(old)["method"] == "dpo"


def _one_line_error(call, match) -> None:
    with pytest.raises(LoRAError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_folders_that_are_not_adapters_or_do_not_fit_are_one_line_errors(tmp_path):
    _one_line_error(lambda: load_adapter(tiny_llama(), tmp_path), "not an adapter folder")
    model = apply_lora(tiny_llama(), rank=2, alpha=2, targets=["q", "down"])
    save_adapter(model, tmp_path / "ad", {"base_model": "tiny llama"})
    assert has_lora(load_adapter(tiny_llama(vocab=40), tmp_path / "ad"))   # the adapted layers fit: it loads
    _one_line_error(lambda: load_adapter(tiny_llama(hidden=64), tmp_path / "ad"),
                    "made for tiny llama.*does not fit this model: its 'blocks.0.ffn.down' is 80 → 48")
    _one_line_error(lambda: load_adapter(GPTModel(GPTConfig(vocab_size=61, context_length=16, emb_dim=48,
                                                            n_heads=2, n_layers=2)), tmp_path / "ad"),
                    "made for tiny llama.*does not fit this model.*not a LoRA matrix of a gpt2")
    config = json.loads((tmp_path / "ad" / CONFIG_FILE).read_text())
    for change, message in [({"use_dora": True}, "DoRA"), ({"peft_type": "IA3"}, "'IA3' adapter"),
                            ({"bias": "all"}, "bias='none'"), ({"rank_pattern": {"q_proj": 8}}, "per-layer ranks")]:
        (tmp_path / "ad" / CONFIG_FILE).write_text(json.dumps({**config, **change}))
        _one_line_error(lambda: load_adapter(tiny_llama(), tmp_path / "ad"), message)
    (tmp_path / "ad" / CONFIG_FILE).write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file({"base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(2, 61)},
              str(tmp_path / "ad" / ADAPTER_FILE))
    _one_line_error(lambda: load_adapter(tiny_llama(), tmp_path / "ad"), "adapts an embedding .*embed_tokens")
    (tmp_path / "ad" / ADAPTER_FILE).write_bytes(b"truncated")
    _one_line_error(lambda: load_adapter(tiny_llama(), tmp_path / "ad"), "cannot be read as safetensors")
    (tmp_path / "ad" / CONFIG_FILE).write_text("{not json")
    _one_line_error(lambda: load_adapter(tiny_llama(), tmp_path / "ad"), "not valid JSON")
    _one_line_error(lambda: save_adapter(tiny_llama(), tmp_path / "x", {}), "no LoRA adapters")


# --------------------------------------------------------------------------------------------- every CLI
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny Llama GGUF with a byte-level ChatML tokenizer (what `--model` of generate and eval load) and an
    adapter for it in peft's format, with large random B so that greedy answers change."""
    from gguf_writers import save_llama_gguf, train_byte_bpe_metadata

    from llm_companion.models.gguf_checkpoint import load_llama_gguf

    folder = tmp_path_factory.mktemp("cli")
    meta = train_byte_bpe_metadata("The quick brown fox jumps over the lazy dog. " * 4, 30)
    cfg = LlamaConfig(vocab_size=len(meta["tokenizer.ggml.tokens"]), context_length=64, emb_dim=32, n_heads=4,
                      n_kv_heads=2, n_layers=2, hidden_dim=64)
    torch.manual_seed(0)
    save_llama_gguf(LlamaModel(cfg), folder / "tiny.gguf", metadata=meta)
    tuned = apply_lora(load_llama_gguf(folder / "tiny.gguf"), rank=4, alpha=8)
    random_b(tuned, std=2.0)
    save_adapter(tuned, folder / "ad", {"base_model": "tiny.gguf", "method": "test"})
    return folder / "tiny.gguf", folder / "ad"


def _cli(argv, capsys):
    from llm_companion.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _adapted_gguf(path, adapter):
    from llm_companion.data.tokenizer import gguf_tokenizer
    from llm_companion.models.gguf_checkpoint import load_llama_gguf

    return load_adapter(load_llama_gguf(path), adapter).eval(), gguf_tokenizer(path)


def test_generate_takes_the_adapter(tiny_gguf, capsys):
    from llm_companion.data.tokenizer import token_bytes
    from llm_companion.inference.generation import generate_stream

    path, adapter = tiny_gguf
    argv = ["generate", "The quick", "--model", path, "--max-new-tokens", 8, "--greedy"]
    plain, tuned = _cli(argv, capsys), _cli([*argv, "--adapter", adapter], capsys)
    model, tok = _adapted_gguf(path, adapter)
    prompt = torch.tensor([tok.encode("The quick", disallowed_special=())])
    want = b"".join(token_bytes(tok, t) for t in generate_stream(model, prompt, 8, temperature=0.0, fast=True,
                                                                  eos_id=getattr(tok, "eot_token", None)))
    assert tuned == want.decode("utf-8", errors="replace") + "\n" and tuned != plain


@pytest.mark.slow  # loads and scores a task's items twice
def test_eval_takes_the_adapter(tiny_gguf, tmp_path, capsys):
    from llm_companion.evaluation.harness import evaluate

    path, adapter = tiny_gguf
    argv = ["eval", "--model", path, "--tasks", "piqa", "--limit", 6, "--no-cache"]
    _cli([*argv, "--out", tmp_path / "plain.json"], capsys)
    _cli([*argv, "--adapter", adapter, "--out", tmp_path / "tuned.json"], capsys)
    plain, tuned = (json.loads((tmp_path / f).read_text()) for f in ("plain.json", "tuned.json"))
    model, tok = _adapted_gguf(path, adapter)
    want = evaluate(model, tok, "piqa", limit=6, cache_dir=False)
    assert tuned["model"].endswith("+ adapter ad")
    assert tuned["tasks"]["piqa"]["items"] == want["tasks"]["piqa"]["items"]
    assert tuned["tasks"]["piqa"]["items"] != plain["tasks"]["piqa"]["items"]


@pytest.fixture(scope="module")
def tiny_assistant(tmp_path_factory):
    """A tiny random GPT saved as a chapter-7 assistant, and an adapter for it (GPT-2 names)."""
    from llm_companion.finetune.assistant import save_assistant

    folder = tmp_path_factory.mktemp("assistant")
    torch.manual_seed(0)
    base = GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=2, n_layers=2,
                              tie_weights=False)).eval()
    save_assistant(base, folder / "base")
    tuned = apply_lora(base, rank=4, alpha=8, targets=["qkv", "out_head"])
    random_b(tuned, std=2.0)
    save_adapter(tuned, folder / "ad", {"base_model": "tiny assistant"})
    return folder / "base", folder / "ad"


def test_chat_takes_the_adapter(tiny_assistant, capsys):
    from llm_companion.finetune.assistant import load_assistant, tokenizer_for
    from llm_companion.serving.chat import stream_reply

    base, adapter = tiny_assistant
    argv = ["chat", "--model", base, "--once", "Name a fox.", "--max-new-tokens", 6, "--device", "cpu"]
    plain, tuned = _cli(argv, capsys), _cli([*argv, "--adapter", adapter], capsys)
    model, meta = load_assistant(base)
    load_adapter(model, adapter)
    want = "".join(stream_reply(model.eval(), tokenizer_for(meta), "Name a fox.", max_new_tokens=6))
    assert tuned == want + "\n" and tuned != plain


def test_serve_takes_the_adapter(tiny_assistant, monkeypatch, capsys):
    import socket

    import uvicorn

    import llm_companion.serving.app as app

    base, adapter = tiny_assistant
    served = []
    monkeypatch.setattr(app, "create_app", lambda engine, api_key=None: served.append(engine) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: None)
    with socket.socket() as s:          # a port free now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _cli(["serve", "--model", base, "--adapter", adapter, "--port", port, "--device", "cpu"], capsys)
    (engine,) = served
    assert engine.name == "base+ad" and has_lora(engine.model)
    assert read_adapter_meta(adapter)["base_model"] == "tiny assistant"
