"""The optional LLM-as-judge (llm_companion.finetune.judge) against a fake Ollama server on localhost."""
import http.server
import json
import socket
import threading

import pytest
import torch

from llm_companion.finetune.instruct import with_responses
from llm_companion.finetune.judge import (
    OllamaUnavailable,
    judge_responses,
    pairwise_judge,
    query_ollama,
    repeated_bigram_share,
    style_classifier,
)


class _FakeOllama(http.server.BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if body["model"] == "missing":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error":"model \\"missing\\" not found, try pulling it first"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        for piece, done in (("Score: 8", False), ("5", True)):  # Ollama streams one JSON object per line
            self.wfile.write(json.dumps({"message": {"role": "assistant", "content": piece},
                                         "done": done}).encode() + b"\n")

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_ollama():
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeOllama)
    _FakeOllama.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/chat"
    server.shutdown()
    server.server_close()


def test_judge_against_fake_ollama(fake_ollama):
    recs = with_responses([{"instruction": "Add 2 and 3.", "input": "", "output": "5"}], ["Five."])
    assert judge_responses(recs, model="tiny", url=fake_ollama) == [85]
    path, body = _FakeOllama.requests[0]
    assert path == "/api/chat" and body["model"] == "tiny"
    assert body["options"]["temperature"] == 0
    content = body["messages"][0]["content"]
    assert "`Five.`" in content and "correct output `5`" in content and "Add 2 and 3." in content


def test_ollama_http_error_says_pull(fake_ollama):
    with pytest.raises(OllamaUnavailable, match="ollama pull missing"):
        query_ollama("hi", model="missing", url=fake_ollama)


def test_ollama_unreachable_message():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OllamaUnavailable, match=r"no Ollama server reachable at .*optional.*ollama serve"):
        query_ollama("hi", url=f"http://127.0.0.1:{port}/api/chat", timeout=5)


# --------------------------------------------------------------------------------------------- local judges
class _JudgeStub(torch.nn.Module):
    """Answers "A" or "B" at the last position: ``rule(ids)`` says whether A wins for a row of token ids."""

    def __init__(self, tokenizer, rule):
        super().__init__()
        self.a, self.b = tokenizer.encode("A")[0], tokenizer.encode("B")[0]
        self.rule, self.vocab = rule, tokenizer.n_vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))          # a device for the judge to read

    def forward(self, ids, logits_at):
        rows = []
        for row, mask in zip(ids.tolist(), logits_at):
            last = int(mask.nonzero()[0, 0])
            assert mask.sum() == 1 and row[last] != 0               # the last real token, never padding
            logits = torch.zeros(self.vocab)
            logits[self.a if self.rule(row[:last + 1]) else self.b] = 1.0
            rows.append(logits)
        return torch.stack(rows)


def _first_index(row, needle):
    return next(i for i in range(len(row)) if row[i:i + len(needle)] == needle)


@pytest.fixture(scope="module")
def chatml_tok(tmp_path_factory):
    from gguf_writers import save_llama_gguf, train_byte_bpe_metadata

    from llm_companion import LlamaConfig, LlamaModel
    from llm_companion.data.tokenizer import gguf_tokenizer

    meta = train_byte_bpe_metadata("Which response answers better? Reply A or B. zebra quokka " * 4, 30)
    cfg = LlamaConfig(vocab_size=len(meta["tokenizer.ggml.tokens"]), context_length=256, emb_dim=32, n_heads=4,
                      n_kv_heads=2, n_layers=1, hidden_dim=64)
    path = tmp_path_factory.mktemp("judge") / "tiny.gguf"
    save_llama_gguf(LlamaModel(cfg), path, metadata=meta)
    return gguf_tokenizer(path)


def test_pairwise_judge_asks_both_orders_and_position_bias_is_a_tie(chatml_tok):
    recs = [{"instruction": "Name an animal", "input": ""}, {"instruction": "Another, longer request", "input": "x"}]
    good, bad = ["zebra", "zebra zebra"], ["quokka", "quokka"]
    z, q = chatml_tok.encode(" zebra"), chatml_tok.encode(" quokka")
    knows = _JudgeStub(chatml_tok, lambda row: _first_index(row, z) < _first_index(row, q))  # likes zebras
    verdict = pairwise_judge(knows, chatml_tok, recs, good, bad, batch_size=1)
    assert verdict.tolist() == [[True, True], [True, True]]                  # good wins in both orders
    assert pairwise_judge(knows, chatml_tok, recs, bad, good).tolist() == [[False, False], [False, False]]
    always_a = _JudgeStub(chatml_tok, lambda row: True)                       # pure position bias
    assert pairwise_judge(always_a, chatml_tok, recs, good, bad).tolist() == [[True, False], [True, False]]
    with pytest.raises(ValueError, match="one answer of each kind"):
        pairwise_judge(knows, chatml_tok, recs, good[:1], bad)


def test_style_classifier_learns_the_chosen_style_from_pairs():
    polite = ["Could you please {}? Thank you kindly.", "I would be happy to {} for you, thank you."]
    curt = ["Just {}.", "{}. Whatever."]
    verbs = ["help", "write it", "check this", "explain that", "answer", "look", "try again", "fix it"]
    recs = [{"chosen": polite[i % 2].format(v), "rejected": curt[i % 2].format(v)} for i, v in enumerate(verbs)]
    clf = style_classifier(recs * 3)
    p = clf.predict_proba(["Please sort it, thank you.", "Sort it. Whatever."])[:, 1]
    assert p[0] > 0.5 > p[1]
    with pytest.raises(ValueError, match="needs preference records"):
        style_classifier([])


def test_repeated_bigram_share_flags_loops_not_prose():
    assert repeated_bigram_share("The car is as fast as lightning.") == 0.0
    assert repeated_bigram_share("A: A: A: A: A: A: A: A:") == pytest.approx(6 / 7)
    assert repeated_bigram_share("A: A: A: A famous actress.") == pytest.approx(1 / 5)
    assert repeated_bigram_share("Yes.") == 0.0 and repeated_bigram_share("") == 0.0
