"""``llm-companion serve`` against a live server on a free port: the official ``openai`` client, every bad input,
concurrent and abandoned streams, the command line, and the chat page in headless Chromium.

Most tests serve a tiny random GPT with the GPT-2 tokenizer and the Alpaca template (fast, and its greedy
replies are arbitrary but deterministic text, so a mix-up between requests shows); the reference answers come
from :func:`llm_companion.serving.chat.stream_reply`, the function behind ``llm-companion chat --once``. One slow test
starts ``llm-companion serve --model smollm2`` itself and compares with ``llm-companion chat --once``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
openai = pytest.importorskip("openai", reason="the test extra's openai client is not installed")
import httpx  # noqa: E402  (comes with openai)
import uvicorn  # noqa: E402

from llm_companion import GPTConfig, GPTModel  # noqa: E402
from llm_companion.data.tokenizer import encode_text, gpt2_tokenizer  # noqa: E402
from llm_companion.finetune.instruct import format_prompt  # noqa: E402
from llm_companion.serving import Engine, Sampling, create_app  # noqa: E402
from llm_companion.serving.chat import stream_reply  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = 256
QUESTIONS = ["Name a prime number.", "What is the capital of France?", "Write a haiku about rain.",
             "Translate 'cat' to German."]


class LiveServer:
    """uvicorn serving ``app`` in a thread on a free port of 127.0.0.1."""

    def __init__(self, app):
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kwargs.pop("api_key", "none"), max_retries=0,
                             timeout=60, **kwargs)

    def health(self) -> dict:
        r = httpx.get(self.url + "/health", timeout=10)
        assert r.status_code == 200
        return r.json()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def tiny():
    """A random GPT (GPT-2 vocabulary, context 256) and the GPT-2 tokenizer.

    Untied, with weights of std 0.3: at the default init such a small model repeats one token whatever the
    prompt, and different questions must get different answers here.
    """
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=CONTEXT, emb_dim=48, n_heads=2, n_layers=2, tie_weights=False)
    model = GPTModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model, gpt2_tokenizer()


@pytest.fixture(scope="module")
def engine(tiny):
    model, tok = tiny
    return Engine(model, tok, name="tiny", template="alpaca")


@pytest.fixture(scope="module")
def server(engine):
    live = LiveServer(create_app(engine))
    yield live
    live.stop()


def expected(tiny, question: str, max_tokens: int) -> str:
    """The greedy reply ``llm-companion chat --once`` prints (its function, called directly)."""
    model, tok = tiny
    return "".join(stream_reply(model, tok, question, max_new_tokens=max_tokens, temperature=0.0))


def prompt_len(tok, question: str) -> int:
    return len(encode_text(tok, format_prompt(question, "alpaca")))


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in r.text
    return body["error"]


# ------------------------------------------------------------------------------------------- the API
def test_non_streamed_reply_equals_chat_once(server, tiny):
    want = expected(tiny, QUESTIONS[1], 24)
    assert want.strip()  # the random model says something (else the comparison would be weak)
    r = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTIONS[1]}], temperature=0, max_tokens=24)
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    # 24 random tokens never produce GPT-2's end-of-text or a '###' section header, so it ran to the limit
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 24
    assert r.usage.prompt_tokens == prompt_len(tiny[1], QUESTIONS[1])
    assert r.usage.total_tokens == r.usage.prompt_tokens + 24


def test_streamed_reply_equals_chat_once_with_usage(server, tiny):
    want = expected(tiny, QUESTIONS[2], 30)
    stream = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTIONS[2]}], temperature=0, max_tokens=30,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for p in pieces if p) > 1  # it really streamed, piece by piece
    assert "".join(pieces) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30
    assert chunks[-1].usage.prompt_tokens == prompt_len(tiny[1], QUESTIONS[2])
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_done_and_no_usage_unless_asked(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=30, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True,
            "temperature": 0}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" and "usage" not in e for e in events)


def test_stop_strings_cut_the_reply(server, tiny):
    full = expected(tiny, QUESTIONS[0], 40)
    stop = full[len(full) // 2:len(full) // 2 + 3]
    want = full[:full.find(stop)].rstrip()
    r = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTIONS[0]}], temperature=0, max_tokens=40,
        stop=[stop])
    assert r.choices[0].message.content == want
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 40


def test_sampling_is_seeded(server):
    client = server.client()

    def ask(seed, top_p=None):
        return client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Tell me a story."}], temperature=1.0,
            max_tokens=16, seed=seed, top_p=top_p).choices[0].message.content

    a, b, c = ask(7), ask(7), ask(8)
    assert a == b and a != c
    assert ask(7, top_p=0.5) == ask(7, top_p=0.5)


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert server.health()["status"] == "ok"
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("gpt-4")


# ------------------------------------------------------------------------------------------ bad input
BAD = [
    # (name, raw body, status, words the message must contain, param)
    ("invalid JSON", b'{"model": "tiny", "messages": [', 400, "not valid JSON", None),
    ("not an object", b'[1, 2]', 400, "JSON object", None),
    ("missing messages", {"model": "tiny"}, 400, "'messages' is missing", "messages"),
    ("empty messages", {"model": "tiny", "messages": []}, 400, "non-empty", "messages"),
    ("unknown role", {"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "use one of system, user, assistant", "messages[0].role"),
    ("content not text", {"model": "tiny", "messages": [{"role": "user", "content": 3}]}, 400,
     "must be a string", "messages[0].content"),
    ("max_tokens 0", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400,
     "positive integer", "max_tokens"),
    ("max_tokens negative", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": -3}, 400, "positive integer", "max_tokens"),
    ("negative temperature", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                              "temperature": -0.5}, 400, ">= 0", "temperature"),
    ("top_p 0", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400,
     "(0, 1]", "top_p"),
    ("seed too big", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "seed": 2**64}, 400,
     "64 bits", "seed"),
    ("stop not text", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": [3]}, 400,
     "'stop' must be", "stop"),
    ("n 2", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "'n' must be 1", "n"),
    ("prompt too long", {"model": "tiny", "messages": [{"role": "user", "content": "word " * 400}]}, 400,
     f"context is {CONTEXT} tokens", "messages"),
    ("unknown model", {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "does not exist; this server serves 'tiny'", "model"),
]


@pytest.mark.parametrize("name,body,status,words,param", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_an_openai_error(server, tiny, name, body, status, words, param):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    err = error_of(r)
    assert words in err["message"]
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"
    if name == "prompt too long":
        assert err["code"] == "context_length_exceeded"
    # ... and the server keeps serving, correctly
    assert server.health()["status"] == "ok"
    ok = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTIONS[3]}], temperature=0, max_tokens=8)
    assert ok.choices[0].message.content == expected(tiny, QUESTIONS[3], 8)


def test_bad_input_through_the_openai_client(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="positive integer"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                       temperature=-1)
    with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_unknown_route_is_a_json_404(server):
    r = httpx.get(server.url + "/v1/completions", timeout=10)
    assert r.status_code in (404, 405)
    assert "/v1/chat/completions" in error_of(r)["message"]


def test_api_key(engine):
    live = LiveServer(create_app(engine, api_key="s3cret"))
    try:
        no_key = httpx.post(live.url + "/v1/chat/completions", timeout=10,
                            json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        assert no_key.status_code == 401 and error_of(no_key)["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            live.client(api_key="wrong").models.list()
        r = live.client(api_key="s3cret").chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0)
        assert r.usage.completion_tokens == 3
        assert live.health()["status"] == "ok"  # health and the page stay open
    finally:
        live.stop()


# --------------------------------------------------------------------------------- concurrency, faults
def test_four_concurrent_streams_get_their_own_answers(server, tiny):
    wants = [expected(tiny, q, 20) for q in QUESTIONS]
    assert len(set(wants)) == 4

    def ask(q):
        stream = server.client().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": q}], temperature=0, max_tokens=20, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(ask, QUESTIONS))
    assert got == wants


def test_disconnect_mid_stream_frees_the_model(server, engine, tiny):
    before = server.health()["cancelled"]
    # 100,000 tokens would take minutes: only a cancelled generation ends in time
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=30, json={
            "model": "tiny", "messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 100_000,
            "stream": True, "temperature": 0}) as r:
        chunks = 0
        for line in r.iter_lines():
            chunks += line.startswith("data: ")
            if chunks >= 5:
                break
    deadline = time.monotonic() + 10
    while server.health()["cancelled"] == before:
        assert time.monotonic() < deadline, "generation went on after the client left"
        time.sleep(0.05)
    assert not engine._lock.locked()
    ok = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTIONS[0]}], temperature=0, max_tokens=12)
    assert ok.choices[0].message.content == expected(tiny, QUESTIONS[0], 12)


def test_engine_cancel_flag_stops_before_the_next_token(engine):
    cancel = threading.Event()
    from llm_companion.serving import Outcome

    outcome, n = Outcome(), 0
    for _ in engine.stream(engine.encode([{"role": "user", "content": "hi"}]), Sampling(max_tokens=500), outcome,
                           cancel):
        n += 1
        if n == 3:
            cancel.set()
    assert outcome.cancelled and outcome.finish_reason is None
    assert outcome.completion_tokens < 500


# ---------------------------------------------------------------------------------------------- page
def test_page_and_assets_are_served_offline(server):
    page = httpx.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("app.js", "style.css"):
        assert f"/static/{asset}" in page.text
        r = httpx.get(f"{server.url}/static/{asset}", timeout=10)
        assert r.status_code == 200 and len(r.text) > 100
        assert "http://" not in r.text and "https://" not in r.text  # nothing loaded from elsewhere
    assert "innerHTML" not in httpx.get(server.url + "/static/app.js", timeout=10).text
    assert httpx.get(server.url + "/static/../engine.py", timeout=10).status_code == 404


# ----------------------------------------------------------------------------------------- the command
def test_cli_warns_on_public_host_and_runs_uvicorn(monkeypatch, capsys, engine):
    from llm_companion.cli import main
    from llm_companion.cli import serve as cli

    calls = {}
    monkeypatch.setattr(cli, "load_engine", lambda *a, **k: calls.setdefault("load", (a, k)) and engine)
    monkeypatch.setattr(uvicorn, "run", lambda app, **k: calls.setdefault("run", k))
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123", "--weights", "fp32"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "0.0.0.0" in err and "--api-key" in err
    assert calls["run"]["host"] == "0.0.0.0" and calls["run"]["port"] == 8123
    assert calls["load"][0] == ("smollm2",)
    assert main(["serve", "--port", "8124"]) == 0
    assert "WARNING" not in capsys.readouterr().err
    calls.clear()
    assert main(["serve", "--port", "8125", "--weights", "q4"]) == 0 and calls["load"][1]["weights"] == "q4"
    with socket.socket() as busy:  # a port in use is one line, before any model is loaded
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        calls.clear()
        assert main(["serve", "--port", str(busy.getsockname()[1])]) == 2
    assert "choose another --port" in capsys.readouterr().err and "load" not in calls


def test_cli_loads_a_saved_assistant_with_options(tmp_path, monkeypatch, capsys, tiny):
    import copy

    from llm_companion.cli import main
    from llm_companion.finetune.assistant import save_assistant
    from llm_companion.serving import load_engine

    save_assistant(tiny[0], tmp_path / "my-assistant")
    eng = load_engine(str(tmp_path / "my-assistant"))
    assert eng.name == "my-assistant" and eng.template == "alpaca"
    assert eng.reply([{"role": "user", "content": QUESTIONS[1]}], Sampling(max_tokens=10))[0] == \
        expected(tiny, QUESTIONS[1], 10)
    # int8 weights: the linear layers are replaced, the reply comes from the quantized model
    from llm_companion.inference.quantize import QuantizedLinear, quantize_model

    q8 = load_engine(str(tmp_path / "my-assistant"), weights="int8")
    assert any(isinstance(m, QuantizedLinear) for m in q8.model.modules()) and "int8" in q8.description
    reference = quantize_model(copy.deepcopy(tiny[0]), "int8").eval()
    assert q8.reply([{"role": "user", "content": QUESTIONS[1]}], Sampling(max_tokens=10))[0] == \
        "".join(stream_reply(reference, tiny[1], QUESTIONS[1], max_new_tokens=10))
    # a folder that is not an adapter: one line naming the fix
    with pytest.raises(ValueError, match="is not an adapter folder") as e:
        load_engine(str(tmp_path / "my-assistant"), adapter=str(tmp_path))
    assert "\n" not in str(e.value)
    assert main(["serve", "--model", str(tmp_path / "nothing-here")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_smollm2_server_equals_chat_once():
    """``llm-companion serve --model smollm2`` (a real process) answers as ``llm-companion chat --once``."""
    exe = [sys.executable, "-m", "llm_companion.cli"]
    question, n = "What is the capital of France?", 40
    env = {**os.environ, "LLM_COMPANION_PROGRESS": "plain"}
    once = subprocess.run([*exe, "chat", "--model", "smollm2", "--once", question, "--max-new-tokens", str(n),
                           "--device", "cpu"], capture_output=True, text=True, timeout=300, env=env, check=True)
    want = once.stdout.removesuffix("\n")
    assert "Paris" in want
    port = _free_port()
    proc = subprocess.Popen([*exe, "serve", "--model", "smollm2", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": question}]
        r = client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, temperature=0,
                                           max_tokens=n)
        assert r.choices[0].message.content == want
        stream = client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, temperature=0,
                                                max_tokens=n, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------- browser
# the `browser` fixture (Debian's chromium through Playwright) is in conftest.py


@pytest.mark.browser
@pytest.mark.slow
def test_page_streams_an_answer_and_stops(server, browser, tiny):
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
        # a first, short question: the whole answer arrives, with token counts
        page.click("summary")  # open the settings
        page.fill("#temperature", "0")
        page.fill("#max_tokens", "20")
        page.fill("#prompt", QUESTIONS[1])
        page.click("#send")
        page.wait_for_selector(".msg.assistant:not(.streaming)", timeout=30_000)
        assert page.text_content(".msg.assistant") == expected(tiny, QUESTIONS[1], 20)
        stats = page.text_content("#stats")
        assert f"{prompt_len(tiny[1], QUESTIONS[1])} prompt tokens" in stats
        assert "20 completion tokens" in stats and "tokens/s" in stats
        # a long one, stopped while it streams; user text with HTML stays text
        before = server.health()["cancelled"]
        evil = "<img src=x onerror=\"window.pwned=1\"><b>bold?</b>"
        page.fill("#max_tokens", "100000")
        page.fill("#prompt", evil)
        page.click("#send")
        bubble = page.locator(".msg.assistant").nth(1)
        page.wait_for_function("document.querySelectorAll('.msg.assistant')[1].textContent.length > 0")
        first = len(bubble.text_content())
        page.wait_for_function(f"document.querySelectorAll('.msg.assistant')[1].textContent.length > {first}")
        assert page.is_enabled("#stop")
        page.click("#stop")
        page.wait_for_selector(".msg.assistant[data-stopped=true]", timeout=10_000)
        assert page.locator(".msg.user").nth(1).text_content() == evil
        assert page.locator("#log img, #log b").count() == 0 and page.evaluate("window.pwned") is None
        deadline = time.monotonic() + 10
        while server.health()["cancelled"] == before:  # the server stopped generating
            assert time.monotonic() < deadline, "stop in the page did not stop the server"
            time.sleep(0.05)
        assert page.is_enabled("#send") and not page.is_enabled("#stop")
        # a conversation too long for the model: the server's message is shown, the page stays usable
        page.fill("#prompt", "word " * 400)
        page.click("#send")
        page.wait_for_selector(".msg.error", timeout=10_000)
        assert f"context is {CONTEXT} tokens" in page.text_content(".msg.error")
        assert page.is_enabled("#send")
    finally:
        page.close()


def test_adapter_changes_the_served_model_and_a_misfit_is_one_line(tmp_path, capsys, tiny):
    import copy

    from llm_companion import apply_lora
    from llm_companion.cli import main
    from llm_companion.finetune.adapters import save_adapter
    from llm_companion.finetune.assistant import save_assistant
    from llm_companion.serving import load_engine

    save_assistant(tiny[0], tmp_path / "base")
    tuned = apply_lora(copy.deepcopy(tiny[0]), rank=4, alpha=8)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)  # a trained adapter moves B away from zero
    save_adapter(tuned, tmp_path / "adapter", {"base_model": "tiny test GPT", "method": "test"})
    eng = load_engine(str(tmp_path / "base"), adapter=str(tmp_path / "adapter"))
    assert eng.name == "base+adapter"
    got = eng.reply([{"role": "user", "content": QUESTIONS[1]}], Sampling(max_tokens=12, temperature=0.0))[0]
    want = "".join(stream_reply(tuned.eval(), tiny[1], QUESTIONS[1], max_new_tokens=12))
    assert got == want and got != expected(tiny, QUESTIONS[1], 12)
    other = GPTModel(GPTConfig(vocab_size=50257, context_length=CONTEXT, emb_dim=64, n_heads=2, n_layers=2))
    save_assistant(other, tmp_path / "other")
    assert main(["serve", "--model", str(tmp_path / "other"), "--adapter", str(tmp_path / "adapter")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not fit this model" in err
