"""Judging answers by something other than the model that wrote them (chapters 7 and 10).

- :func:`judge_responses`: score answers from 0 to 100 with a local LLM served by Ollama (optional; chapter 7
  works without it). :func:`query_ollama` is its HTTP client; every failure to reach the server is one
  :class:`OllamaUnavailable` saying how to start it.
- :func:`pairwise_judge`: a local model (chapter 10: the untuned SmolLM2) reads an instruction and two answers
  and says which is better, in *both* orders, so a judge that always picks the first answer shown (position
  bias) counts as undecided rather than as a preference.
- :func:`style_classifier`: a measure the preference data itself defines: a bag-of-words classifier trained
  to tell the data's chosen answers from its rejected ones, then applied to any answer.
- :func:`repeated_bigram_share`: a cheap check for degenerate, repetitive answers (``A: A: A ...``).
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

import torch
from torch import nn

from llm_companion.finetune.chat_sft import user_message
from llm_companion.finetune.instruct import format_input
from llm_companion.inference.smollm2 import encode_chat
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


PAIRWISE_PROMPT = ("Which response answers the instruction better: more helpful, correct and polite?\n\n"
                   "Instruction: {instruction}\n\nResponse A: {a}\n\nResponse B: {b}\n\n"
                   "Reply with one letter, A or B.")


def _choice_ids(tokenizer) -> tuple[int, int]:
    a, b = tokenizer.encode("A"), tokenizer.encode("B")
    if len(a) != 1 or len(b) != 1:
        raise ValueError("the judge's tokenizer must spell 'A' and 'B' as one token each")
    return a[0], b[0]


@torch.no_grad()
def _prefers_first(model: nn.Module, tokenizer, prompts: list[list[int]], batch_size: int) -> torch.Tensor:
    """For each prompt, whether the next-token logit of ``A`` beats that of ``B``, (N,) bool."""
    a_id, b_id = _choice_ids(tokenizer)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # batches of similar length pad little
    out = torch.zeros(len(prompts), dtype=torch.bool)
    for s in progress(range(0, len(order), batch_size), desc="judging", unit="batch",
                      disable=len(order) <= batch_size):
        rows = order[s:s + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        last = torch.zeros(len(rows), width, dtype=torch.bool)
        for j, i in enumerate(rows):            # right-padded: a row's last real token sees no padding
            ids[j, :len(prompts[i])] = torch.tensor(prompts[i])
            last[j, len(prompts[i]) - 1] = True
        logits = model(ids.to(device), logits_at=last.to(device)).float().cpu()      # (B, V)
        out[rows] = logits[:, a_id] > logits[:, b_id]
    return out


def pairwise_judge(model: nn.Module, tokenizer, records: Sequence[dict], answers_x: Sequence[str],
                   answers_y: Sequence[str], *, batch_size: int = 8) -> torch.Tensor:
    """Ask ``model`` (a ChatML chat model) which of two answers to each record is better, in both orders.

    Returns (N, 2) bool: column 0 "x judged better when shown as A", column 1 "x judged better when shown
    as B". A verdict counts only where both columns agree; disagreement is position bias, a tie.
    """
    if not len(records) == len(answers_x) == len(answers_y):
        raise ValueError(f"need one answer of each kind per record; got {len(records)} records, "
                         f"{len(answers_x)} and {len(answers_y)} answers")
    was_training = model.training
    model.eval()

    def prompt(rec, a, b):
        return encode_chat(tokenizer, PAIRWISE_PROMPT.format(instruction=user_message(rec), a=a, b=b))

    x_first = [prompt(r, x, y) for r, x, y in zip(records, answers_x, answers_y)]
    y_first = [prompt(r, y, x) for r, x, y in zip(records, answers_x, answers_y)]
    picks = _prefers_first(model, tokenizer, x_first + y_first, batch_size)
    model.train(was_training)
    n = len(records)
    return torch.stack([picks[:n], ~picks[n:]], 1)


def style_classifier(records: Sequence[dict], *, seed: int = 0):
    """A scikit-learn pipeline (word and word-pair TF-IDF, logistic regression) fitted to tell each record's
    ``chosen`` answer (class 1) from its ``rejected`` one (class 0); ``predict_proba(texts)[:, 1]`` then
    scores how much any answer reads like the chosen ones. The data's own definition of "preferred",
    independent of the model being tuned; check it on held-out pairs before trusting it."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if not records:
        raise ValueError("style_classifier needs preference records to learn from")
    texts = [r["chosen"] for r in records] + [r["rejected"] for r in records]
    labels = [1] * len(records) + [0] * len(records)
    clf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
                        LogisticRegression(C=4.0, max_iter=2000, random_state=seed))
    return clf.fit(texts, labels)


def repeated_bigram_share(text: str) -> float:
    """Share of an answer's word pairs that repeat an earlier pair: 0 for ordinary prose, near 1 for a loop
    such as ``A: A: A: A:``. (Under three words: 0.)"""
    words = text.split()
    pairs = list(zip(words, words[1:]))
    if len(pairs) < 2:
        return 0.0
    return 1 - len(set(pairs)) / len(pairs)
