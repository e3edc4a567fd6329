"""GPT-2 weights: OpenAI's TF checkpoint layout and HF safetensors against Hugging Face's GPT-2 as the oracle."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llm_companion.data import artifacts
from llm_companion.data.download import IntegrityError
from llm_companion.models.checkpoint import CheckpointError, CheckpointMismatch
from llm_companion.models.config import GPTConfig
from llm_companion.models.gpt import GPTModel
from llm_companion.models.openai_checkpoint import (
    MissingCheckpointFile,
    TensorFlowMissing,
    config_from_hparams,
    export_tf_checkpoint,
    from_safetensors,
    from_tf_checkpoint,
    hf_name,
    load_tf_checkpoint,
    load_weights_into_gpt,
    openai_name,
    weight_map,
)

HPARAMS = {"n_vocab": 96, "n_ctx": 32, "n_embd": 128, "n_head": 2, "n_layer": 2}  # 64-dim heads, as GPT-2


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=HPARAMS["n_vocab"], n_positions=HPARAMS["n_ctx"], n_embd=HPARAMS["n_embd"],
                     n_head=HPARAMS["n_head"], n_layer=HPARAMS["n_layer"], resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF initialises biases and LN to 0/1; random values make the test see every tensor
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.normal_(0.0, 0.2)
    return model


def write_openai_checkpoint(hf_model, folder: Path) -> Path:
    """OpenAI's layout written with TensorFlow's v1 Saver directly (as OpenAI did), independent of gpt2.py."""
    import tensorflow as tf

    sd = {k.removeprefix("transformer."): v.detach().numpy() for k, v in hf_model.state_dict().items()}
    arrays = {"model/wte": sd["wte.weight"], "model/wpe": sd["wpe.weight"],
              "model/ln_f/g": sd["ln_f.weight"], "model/ln_f/b": sd["ln_f.bias"]}
    for i in range(hf_model.config.n_layer):
        for ln in ("ln_1", "ln_2"):
            arrays[f"model/h{i}/{ln}/g"] = sd[f"h.{i}.{ln}.weight"]
            arrays[f"model/h{i}/{ln}/b"] = sd[f"h.{i}.{ln}.bias"]
        for conv in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            scope = conv.replace(".", "/")
            arrays[f"model/h{i}/{scope}/w"] = sd[f"h.{i}.{conv}.weight"][None]    # (1, in, out): a 1x1 conv
            arrays[f"model/h{i}/{scope}/b"] = sd[f"h.{i}.{conv}.bias"]
    folder.mkdir(parents=True)
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: tf.compat.v1.get_variable(name, initializer=tf.constant(a)) for name, a in arrays.items()}
        saver = tf.compat.v1.train.Saver(var_list=variables, save_relative_paths=True)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(folder / "model.ckpt"))
    (folder / "hparams.json").write_text(json.dumps(HPARAMS))
    return folder


@pytest.fixture(scope="module")
def openai_dir(hf_model, tmp_path_factory):
    return write_openai_checkpoint(hf_model, tmp_path_factory.mktemp("openai") / "ckpt")


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, HPARAMS["n_vocab"], (2, 17), generator=torch.Generator().manual_seed(1))


def hf_logits(hf_model, ids):
    with torch.no_grad():
        return hf_model(ids).logits


# ----------------------------------------------------------------------------------------- the mapping
def test_names_round_trip_and_follow_openai():
    cfg = config_from_hparams(HPARAMS)
    rows = weight_map(cfg)
    assert len(rows) == 2 + 12 * HPARAMS["n_layer"] + 2
    assert rows[4] == ("model/h0/attn/c_attn/w", (1, 128, 384), "blocks.0.attn.qkv.weight", (384, 128), True)
    assert hf_name("model/h1/mlp/c_proj/w") == "h.1.mlp.c_proj.weight"
    assert hf_name("model/ln_f/g") == "ln_f.weight"
    for r in rows:
        assert openai_name(hf_name(r.openai)) == r.openai


def test_config_from_hparams_matches_gpt2_small_preset():
    assert config_from_hparams(artifacts.GPT2_HPARAMS["124M"]) == GPTConfig.preset("gpt2-small")
    assert config_from_hparams(artifacts.GPT2_HPARAMS["1558M"]) == GPTConfig.preset("gpt2-xl")


# ----------------------------------------------------------------------------------- parity with HF
def test_tf_checkpoint_matches_hf_logits(hf_model, openai_dir, ids):
    settings, params = load_tf_checkpoint(openai_dir)
    assert settings == HPARAMS
    assert params["model/h0/attn/c_attn/w"].shape == (1, 128, 384)
    model = load_weights_into_gpt(GPTModel(config_from_hparams(settings)), params).eval()
    with torch.no_grad():
        ours = model(ids)
    torch.testing.assert_close(ours, hf_logits(hf_model, ids), atol=1e-4, rtol=0)
    assert model.out_head.weight is model.tok_emb.weight  # tied to model/wte


def test_untied_model_gets_a_copy_of_wte(openai_dir, ids, hf_model):
    settings, params = load_tf_checkpoint(openai_dir)
    model = load_weights_into_gpt(GPTModel(config_from_hparams(settings, tie_weights=False)), params).eval()
    assert torch.equal(model.out_head.weight, model.tok_emb.weight)
    assert model.out_head.weight is not model.tok_emb.weight
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("with_config", [True, False])
def test_from_safetensors_matches_hf_logits(hf_model, ids, tmp_path, with_config):
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    if not with_config:  # then the shapes give the config (heads = emb_dim // 64)
        (tmp_path / "config.json").unlink()
    model = from_safetensors(tmp_path)
    assert model.cfg == config_from_hparams(HPARAMS)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------- export
def test_export_round_trips_exactly_in_openais_layout(openai_dir, tmp_path):
    torch.manual_seed(3)
    model = GPTModel(config_from_hparams(HPARAMS))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    folder = export_tf_checkpoint(model, tmp_path / "export")
    names = {p.name for p in folder.iterdir()}
    assert {"checkpoint", "hparams.json", "model.ckpt.index", "model.ckpt.meta",
            "model.ckpt.data-00000-of-00001"} <= names
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))  # no temporary folder left behind
    settings, params = load_tf_checkpoint(folder)
    assert settings == HPARAMS
    # the same variable names and shapes as the checkpoint written with TensorFlow directly
    _, reference = load_tf_checkpoint(openai_dir)
    assert {k: v.shape for k, v in params.items()} == {k: v.shape for k, v in reference.items()}
    back = from_tf_checkpoint(folder)
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


def test_export_writes_openais_hparams_format_and_tokenizer_files(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_COMPANION_HOME", str(tmp_path / "home"))
    cfg = GPTConfig.preset("gpt-nano", context_length=1024, emb_dim=768, n_heads=12, n_layers=10)
    folder = export_tf_checkpoint(GPTModel(cfg.replace(emb_dim=24, n_heads=2, n_layers=1)), tmp_path / "export")
    hp = (folder / "hparams.json").read_text()
    assert hp == '{\n  "n_vocab": 50257,\n  "n_ctx": 1024,\n  "n_embd": 24,\n  "n_head": 2,\n  "n_layer": 1\n}\n'
    # in this format, 124M's hparams take OpenAI's published 90 bytes
    assert len(hp) - len("24") - len("2") - len("1") + len("768") + len("12") + len("12") == 90
    assert (folder / "checkpoint").stat().st_size == 77  # as OpenAI's
    for f in ("encoder.json", "vocab.bpe"):
        assert (folder / f).read_bytes() == artifacts.fetch({"encoder.json": "gpt2-encoder",
                                                             "vocab.bpe": "gpt2-vocab"}[f]).read_bytes()


# ------------------------------------------------------------------------------------------- errors
def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_checkpoint_is_a_clear_error(openai_dir, tmp_path):
    bad = _copy(openai_dir, tmp_path / "bad")
    data = bad / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_tf_checkpoint(bad)


def test_corrupted_checkpoint_is_a_clear_error(openai_dir, tmp_path):
    bad = _copy(openai_dir, tmp_path / "bad")
    data = bad / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64 * [0x5A])
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_tf_checkpoint(bad)


@pytest.mark.parametrize("missing", ["hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001"])
def test_missing_file_is_named(openai_dir, tmp_path, missing):
    bad = _copy(openai_dir, tmp_path / "bad")
    (bad / missing).unlink()
    with pytest.raises(MissingCheckpointFile, match=missing.replace(".", r"\.")):
        load_tf_checkpoint(bad)


def test_wrong_shape_names_the_tensor(openai_dir):
    settings, params = load_tf_checkpoint(openai_dir)
    params = dict(params, **{"model/h1/mlp/c_fc/w": np.zeros((1, 128, 500), np.float32)})
    model = GPTModel(config_from_hparams(settings))
    before = model.tok_emb.weight.clone()
    with pytest.raises(CheckpointMismatch, match=r"model/h1/mlp/c_fc/w has shape \(1, 128, 500\)"):
        load_weights_into_gpt(model, params)
    assert torch.equal(model.tok_emb.weight, before)  # nothing copied before the check failed


def test_config_that_does_not_fit_names_the_missing_variable(openai_dir):
    settings, params = load_tf_checkpoint(openai_dir)
    with pytest.raises(CheckpointMismatch, match="model/h2/ln_1/g"):
        load_weights_into_gpt(GPTModel(config_from_hparams(settings, n_layers=3)), params)
    with pytest.raises(CheckpointMismatch, match="qkv_bias=True"):
        load_weights_into_gpt(GPTModel(config_from_hparams(settings, qkv_bias=False)), params)


def test_without_tensorflow_the_error_says_what_to_install(openai_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    with pytest.raises(TensorFlowMissing, match=r'pip install "llm-companion\[tf\]"'):
        load_tf_checkpoint(openai_dir)


def test_corrupted_safetensors_is_a_clear_error(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(IntegrityError, match="truncated"):
        artifacts.check_safetensors(f)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        from_safetensors(f)
