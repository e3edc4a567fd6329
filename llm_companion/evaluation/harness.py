"""``evaluate``: score a model on tasks and return the report card as one JSON-ready dict.

Per-item scores are appended to a cache (``data/eval-cache/<model fingerprint>/<task>.jsonl``) as they are
computed, so an interrupted run resumes where it stopped; the fingerprint is a hash of the weights and the
tokenizer, so a changed model never reads another model's scores.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from llm_companion.data.artifacts import fetch
from llm_companion.data.download import data_dir
from llm_companion.evaluation.bpb import bits_per_byte
from llm_companion.evaluation.scoring import score_batch, score_choices, split_request
from llm_companion.evaluation.stats import wilson_interval
from llm_companion.evaluation.tasks import Item, check_tasks, load_task, select
from llm_companion.progress import progress

SCORER_VERSION = 1  # bump when a change to scoring would change cached numbers


def model_fingerprint(model: nn.Module, tokenizer) -> str:
    """A short hash of the model's weights (every parameter and buffer) and its tokenizer's name."""
    h = hashlib.sha256(f"v{SCORER_VERSION}|{type(model).__name__}|{getattr(tokenizer, 'name', '')}".encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$LLM_COMPANION_EVAL_CACHE`` if set, else ``data/eval-cache``."""
    return Path(os.environ.get("LLM_COMPANION_EVAL_CACHE") or data_dir() / "eval-cache")


def _key(item: Item) -> str:
    """The item's place and a hash of its text: items supplied by hand (``evaluate(items=...)``) or a changed
    cleanup never read the cached score of a different item that happens to share its index."""
    p = item.extra.get("paradigm")
    text = hashlib.sha256(json.dumps([item.context, list(item.choices)]).encode()).hexdigest()[:12]
    return f"{p}/{item.index}/{text}" if p else f"{item.index}/{text}"


class _ScoreCache:
    """Per-item scores on disk (one JSON line per item), read back on the next run."""

    def __init__(self, path: Path | None):
        self.path = path
        self.rows: dict[str, dict] = {}
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["key"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by an interruption
        self._f = None

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, row: dict) -> None:
        self.rows[row["key"]] = row
        if self.path is None:
            return
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def score_item(model: nn.Module, tokenizer, item: Item) -> dict:
    """Log-likelihood, greedy flag and token count of each of an item's choices."""
    pairs = [split_request(tokenizer, item.context, c) for c in item.choices]
    ctx = pairs[0][0]
    truncated = len(ctx) + max(len(p[1]) for p in pairs) - 1 > model.cfg.context_length
    scores = score_choices(model, ctx, [p[1] for p in pairs])
    return {"key": _key(item), "ll": [s.logprob for s in scores], "greedy": [s.greedy for s in scores],
            "tokens": [s.n_tokens for s in scores], "truncated": truncated}


def score_items(model: nn.Module, tokenizer, items: list[Item], max_tokens: int = 1024) -> list[dict]:
    """:func:`score_item` of many items through :func:`score_batch`: the same numbers (to float rounding),
    with the items' sequences packed into batches instead of one item per forward."""
    requests, spans = [], []
    for item in items:
        pairs = [split_request(tokenizer, item.context, c) for c in item.choices]
        spans.append((len(requests), pairs))
        requests.extend(pairs)
    scores = score_batch(model, requests, max_tokens)
    rows = []
    for item, (start, pairs) in zip(items, spans, strict=True):
        mine = scores[start:start + len(pairs)]
        truncated = len(pairs[0][0]) + max(len(p[1]) for p in pairs) - 1 > model.cfg.context_length
        rows.append({"key": _key(item), "ll": [s.logprob for s in mine], "greedy": [s.greedy for s in mine],
                     "tokens": [s.n_tokens for s in mine], "truncated": truncated})
    return rows


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first of ties, as numpy's argmax


def summarize(task: str, items: list[Item], rows: list[dict]) -> dict:
    """A task's entry of the report: n, acc, acc_norm, Wilson interval and the per-item predictions."""
    out_items, right, right_norm, truncated = [], 0, 0, 0
    ll_sum, n_tok = 0.0, 0
    for item, row in zip(items, rows, strict=True):
        truncated += bool(row.get("truncated"))
        rec: dict = {"index": item.index}
        if "paradigm" in item.extra:
            rec["paradigm"] = item.extra["paradigm"]
        if task == "blimp":
            pred, gold = int(row["ll"][0] > row["ll"][1]), 1  # 1: the good sentence scored higher
            norm_ok = None
        elif task == "lambada":
            pred, gold = int(row["greedy"][0]), 1
            rec["logprob"] = row["ll"][0]
            ll_sum += row["ll"][0]
            n_tok += row["tokens"][0]
            norm_ok = None
        else:
            pred, gold = _argmax(row["ll"]), item.gold
            norm = [ll / max(n, 1) for ll, n in zip(row["ll"], item.lengths, strict=True)]
            norm_ok = _argmax(norm) == gold
            rec["pred_norm"] = _argmax(norm)
            right_norm += norm_ok
        right += pred == gold
        rec.update(pred=pred, gold=gold)
        out_items.append(rec)
    n = len(items)
    result = {"n": n, "acc": right / n if n else float("nan"),
              "acc_norm": (right_norm / n if n else float("nan")) if task not in ("blimp", "lambada") else None,
              "ci95": list(wilson_interval(right, n)), "truncated": truncated, "items": out_items}
    # acc_norm gets its own interval, so a number quoted with an interval is never another metric's
    result["ci95_norm"] = list(wilson_interval(right_norm, n)) if result["acc_norm"] is not None else None
    if task == "lambada" and n:
        result["perplexity"] = math.exp(-ll_sum / n)          # per last word, as the GPT-2 paper reports
        result["token_perplexity"] = math.exp(-ll_sum / max(n_tok, 1))
    if task == "blimp":
        by: dict[str, list[int]] = {}
        for rec in out_items:
            by.setdefault(rec["paradigm"], []).append(rec["pred"])
        result["by_paradigm"] = {p: sum(v) / len(v) for p, v in sorted(by.items())}
    return result


def _bpb_task(model, tokenizer) -> dict:
    text = Path(fetch("the-verdict")).read_text(encoding="utf-8")
    r = bits_per_byte(model, tokenizer, text, desc="bpb")
    return {"n": r["tokens"], "acc": None, "acc_norm": None, "ci95": None, "ci95_norm": None, "items": [],
            "text": "the-verdict", **r}


@torch.no_grad()
def evaluate(model: nn.Module, tokenizer, tasks, limit: int | None = None, seed: int = 0,
             name: str | None = None, *, cache_dir: str | os.PathLike | None | bool = None,
             items: dict[str, list[Item]] | None = None, batch_tokens: int | None = None) -> dict:
    """Score ``model`` on ``tasks`` (names or a comma list; see :data:`~.tasks.TASKS`) and return
    ``{"model": name, "tasks": {task: {"n", "acc", "acc_norm", "ci95", "items", ...}}}``.

    ``limit`` items per task are chosen by a seeded rule (:func:`~.tasks.select`), the same for every model.
    ``cache_dir`` (default ``data/eval-cache``; ``False`` for none) keeps per-item scores so a run resumes.
    ``items`` supplies a task's items directly (tests, or your own set). ``batch_tokens`` scores several
    items per forward (:func:`score_items`, batches of that many positions) instead of one item at a time.
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number of items, got {limit}")
    names = check_tasks(tasks)
    was_training = model.training
    model.eval()
    fingerprint = model_fingerprint(model, tokenizer) if cache_dir is not False else None
    root = None if cache_dir is False else Path(cache_dir) if cache_dir is not None else default_cache_dir()
    report: dict = {"model": name or type(model).__name__, "fingerprint": fingerprint, "seed": seed,
                    "limit": limit, "tasks": {}}
    try:
        for task in names:
            if task == "bpb":
                report["tasks"][task] = _bpb_task(model, tokenizer)
                continue
            chosen = select(items[task] if items and task in items else load_task(task), limit, seed, task)
            cache = _ScoreCache(root / fingerprint / f"{task}.jsonl" if root is not None else None)
            rows = [cache.get(_key(item)) for item in chosen]
            todo = [i for i, row in enumerate(rows) if row is None]
            done = len(chosen) - len(todo)
            # the bar counts cached items as done, so its rate is that of the items scored now
            desc = f"{task} ({done:,} cached)" if done else task
            step = 64 if batch_tokens else 1  # items per round: a cache write and a bar update after each
            try:
                with progress(total=len(chosen), initial=done, desc=desc, unit="item") as bar:
                    for at in range(0, len(todo), step):
                        part = todo[at:at + step]
                        got = (score_items(model, tokenizer, [chosen[i] for i in part], batch_tokens)
                               if batch_tokens else [score_item(model, tokenizer, chosen[part[0]])])
                        for i, row in zip(part, got, strict=True):
                            rows[i] = row
                            cache.put(row)
                        bar.update(len(part))
            finally:
                cache.close()
            report["tasks"][task] = summarize(task, chosen, rows)
    finally:
        model.train(was_training)
    return report
