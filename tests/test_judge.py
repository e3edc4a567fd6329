"""The optional LLM-as-judge (llm_companion.finetune.judge) against a fake Ollama server on localhost."""
import http.server
import json
import socket
import threading

import pytest

from llm_companion.finetune.instruct import with_responses
from llm_companion.finetune.judge import OllamaUnavailable, judge_responses, query_ollama


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
