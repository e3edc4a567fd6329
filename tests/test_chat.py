"""Saving/loading the assistant (finetune.assistant), streaming decoding (serving.chat) and ``llm-companion chat``."""
import json
import os
import subprocess
import sys

import pytest
import torch

from llm_companion.data.tokenizer import gpt2_tokenizer
from llm_companion.finetune.assistant import AssistantNotFound, load_assistant, save_assistant
from llm_companion.finetune.instruct import PROMPT_STYLES
from llm_companion.models.config import GPTConfig
from llm_companion.models.gpt import GPTModel
from llm_companion.serving.chat import decode_stream, stream_reply


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("gpt-nano", context_length=128)).eval()
    directory = tmp_path_factory.mktemp("chat") / "assistant"
    save_assistant(model, directory, base={"weights": "random init", "source": "test"},
                   notes={"rouge_l": 0.5})
    return directory, model


def test_save_load_roundtrip(saved):
    directory, model = saved
    assert {"model.safetensors", "config.json", "assistant.json"} <= {p.name for p in directory.iterdir()}
    loaded, meta = load_assistant(directory)
    assert meta == {"prompt_style": "alpaca", "tokenizer": "gpt2",
                    "base": {"weights": "random init", "source": "test"}, "notes": {"rouge_l": 0.5}}
    assert loaded.cfg == model.cfg and not loaded.training
    assert loaded.out_head.weight is loaded.tok_emb.weight  # still tied after loading
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(idx), loaded(idx))


def test_save_rejects_unknown_style_and_load_missing(tmp_path, saved):
    with pytest.raises(ValueError, match="unknown prompt style"):
        save_assistant(saved[1], tmp_path / "x", prompt_style_name="chatml")
    with pytest.raises(AssistantNotFound, match="does not exist; create one by running chapters/07"):
        load_assistant(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssistantNotFound, match="not a saved assistant"):
        load_assistant(tmp_path / "empty")


# ------------------------------------------------------------------------------------------ streaming
def test_decode_stream_never_prints_half_characters():
    tok = gpt2_tokenizer()
    text = "Café ☕ costs 3€, and 😀 means yes."
    ids = tok.encode(text)
    # the test is only meaningful if some character really spans tokens
    assert any(_invalid_utf8(tok.decode_single_token_bytes(t)) for t in ids)
    pieces = list(decode_stream(ids, tok))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 5  # it streams: many pieces, not one string at the end


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_decode_stream_stops_at_a_new_turn_and_stops_consuming():
    tok = gpt2_tokenizer()
    ids = tok.encode("\n Sure thing.\n\n### Instruction:\nWrite more and more text")
    consumed = []

    def source():
        for t in ids:
            consumed.append(t)
            yield t

    pieces = list(decode_stream(source(), tok, stops=PROMPT_STYLES["alpaca"].stops))
    assert "".join(pieces) == "Sure thing."
    assert len(consumed) < len(ids)  # generation ended at the marker
    # an incomplete marker at the end is ordinary text
    assert "".join(decode_stream(tok.encode("a\n#b"), tok, stops=("\n### ",))) == "a\n#b"


def test_stream_reply_is_deterministic_greedy(saved):
    tok = gpt2_tokenizer()
    model = saved[1]
    a = "".join(stream_reply(model, tok, "Name a colour.", max_new_tokens=8))
    b = "".join(stream_reply(model, tok, "Name a colour.", max_new_tokens=8))
    assert a == b and isinstance(a, str)


# ------------------------------------------------------------------------------------------ CLI
def _cli(*args, stdin=""):
    env = {**os.environ, "LLM_COMPANION_PROGRESS": "plain"}
    return subprocess.run([sys.executable, "-m", "llm_companion.cli", "chat", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=120)


def _expected(model, message, n):
    return "".join(stream_reply(model, gpt2_tokenizer(), message, max_new_tokens=n))


def test_cli_once(saved):
    directory, model = saved
    r = _cli("--model", str(directory), "--device", "cpu", "--max-new-tokens", "6", "--once", "Name a colour.")
    assert r.returncode == 0, r.stderr
    assert r.stdout == _expected(model, "Name a colour.", 6) + "\n"


def test_cli_interactive_until_eof(saved):
    directory, model = saved
    r = _cli("--model", str(directory), "--device", "cpu", "--max-new-tokens", "5",
             stdin="Hello there\n\nWhat is 2+2?\n")
    assert r.returncode == 0, r.stderr
    banner, rest = r.stdout.split("\n", 1)
    assert banner.startswith("Chatting with ") and "/quit" in banner
    a1, a2 = _expected(model, "Hello there", 5), _expected(model, "What is 2+2?", 5)
    # the blank line is skipped without an answer; EOF ends the loop cleanly
    assert rest == f"you> assistant> {a1}\nyou> you> assistant> {a2}\nyou> \n"


def test_cli_quit_command(saved):
    r = _cli("--model", str(saved[0]), "--device", "cpu", "--max-new-tokens", "3", stdin="hi\n/quit\nnever\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("assistant> ") == 1


def test_cli_missing_model_says_how_to_create_one(tmp_path):
    r = _cli("--model", str(tmp_path / "none"), "--once", "hi")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "07_instruction_finetuning.ipynb" in r.stderr
    assert r.stderr.startswith("llm-companion chat: error:")


def test_saved_metadata_is_plain_json(saved, tmp_path):
    meta = json.loads((saved[0] / "assistant.json").read_text())
    assert meta["tokenizer"] == "gpt2" and meta["prompt_style"] == "alpaca"
    # a machine-specific absolute path of the base weights is not stored; the relative one is
    save_assistant(saved[1], tmp_path / "a", base={"local_path": "/home/me/models/x", "path": "models/x"})
    assert load_assistant(tmp_path / "a")[1]["base"] == {"path": "models/x"}
