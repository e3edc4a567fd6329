"""LLM-as-judge: score instruction-following answers from 0 to 100 with a local model served by Ollama.

Optional (chapter 7 works without it): :func:`judge_responses` sends each record's instruction, reference
answer and model response to an Ollama server (``ollama serve``, default ``localhost:11434``) through its
HTTP ``/api/chat`` endpoint, asks for a single integer and parses it. :func:`query_ollama` is that HTTP
client; every failure to reach the server is one :class:`OllamaUnavailable` saying how to start it.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from llm_companion.finetune.instruct import format_input
from llm_companion.progress import progress

OLLAMA_URL = "http://localhost:11434/api/chat"


class OllamaUnavailable(RuntimeError):
    """No Ollama server answered (the LLM-as-judge is optional; everything else works without it)."""


def query_ollama(prompt: str, *, model: str = "llama3", url: str = OLLAMA_URL, seed: int = 123,
                 timeout: float = 120.0) -> str:
    """Send one user message to an Ollama server's ``/api/chat`` and return the reply text.

    Deterministic options (seed, temperature 0). Reads both Ollama's streamed JSON lines and a single JSON
    answer. Raises :class:`OllamaUnavailable` when nothing listens at ``url``.
    """
    payload = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"seed": seed, "temperature": 0, "num_ctx": 2048},
    }).encode("utf-8")
    req = urllib.request.Request(url, data=payload, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace").strip()
        raise OllamaUnavailable(f"the Ollama server at {url} answered HTTP {e.code} ({detail or e.reason}); "
                                f"is the model pulled? Run `ollama pull {model}`") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:  # socket.timeout is TimeoutError
        reason = getattr(e, "reason", e)
        raise OllamaUnavailable(f"no Ollama server reachable at {url} ({reason}); the LLM-as-judge is optional — "
                                f"install Ollama, run `ollama serve` and `ollama pull {model}` to use it") from None
    reply = []
    for line in body.splitlines():
        if line.strip():
            msg = json.loads(line)
            if "error" in msg:
                raise OllamaUnavailable(f"the Ollama server at {url} said: {msg['error']}")
            reply.append(msg.get("message", {}).get("content", ""))
    return "".join(reply)


JUDGE_PROMPT = ("Given the input `{input}` and correct output `{output}`, score the model response "
                "`{response}` on a scale from 0 to 100, where 100 is the best score. "
                "Respond with the integer number only.")


def judge_responses(records: Sequence[dict], *, key: str = "model_response", model: str = "llama3",
                    url: str = OLLAMA_URL, query: Callable[..., str] | None = None) -> list[int | None]:
    """Score each response from 0 to 100 with a local LLM (LLM-as-judge); ``None`` where no number came back."""
    query = query or query_ollama
    scores: list[int | None] = []
    for rec in progress(records, desc="judging", unit="example"):
        reply = query(JUDGE_PROMPT.format(input=format_input(rec), output=rec["output"], response=rec[key]),
                      model=model, url=url)
        m = re.search(r"\d+", reply)
        scores.append(min(100, int(m.group())) if m else None)
    return scores
