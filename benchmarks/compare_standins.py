"""Compare two books stand-ins (e.g. recipe v1 against v2) with chapter 9's harness: bits per byte, BLiMP,
and greedy samples for fixed prompts.

Token losses are not comparable across text preparations (v2's corpus has ~10% fewer tokens for the same
words), so the text measure is **bits per byte** on the same held-out words:

* ``the-verdict``: chapter 4's story, which no stand-in saw (the corpus builder excludes every work holding it);
* ``held-out, as filed``: the last 5% of the characters of every distinct work of the books corpus as Project
  Gutenberg files it (hard wraps, indentation). Both recipes hold out the last 10% of each work's tokens, so
  this text is validation text for both, whatever the preparation;
* ``held-out, unwrapped``: the same excerpts through :func:`llm_companion.data.corpus.unwrap_paragraphs`.

BLiMP: ``--blimp`` pairs spread evenly over the 67 paradigms (:func:`llm_companion.evaluation.select`, seed 0),
the same pairs for both models, compared with a paired test (McNemar).

    python benchmarks/compare_standins.py MODEL_A MODEL_B [--blimp 6700] [--out FILE.json]

MODEL_A / MODEL_B: folders in OpenAI's checkpoint layout (``models/standin-books-<id>/``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from llm_companion.data.artifacts import fetch
from llm_companion.data.corpus import books_corpus, unwrap_paragraphs
from llm_companion.data.tokenizer import gpt2_tokenizer
from llm_companion.evaluation import bits_per_byte, evaluate, paired_test
from llm_companion.inference.generation import generate
from llm_companion.models.openai_checkpoint import from_tf_checkpoint

PROMPTS = ("Every effort moves you", "It was a dark and stormy night;", "The old man looked at the",
           "She opened the letter and")


def held_out_excerpts(share: float = 0.05, cap: int = 4000) -> str:
    """The last ``share`` of every distinct work's characters (at most ``cap``), as filed, cut at a line start."""
    parts = []
    for text in books_corpus(verbose=False).texts():
        tail = text[len(text) - min(cap, int(len(text) * share)):]
        tail = tail[tail.find("\n") + 1:] if "\n" in tail else tail  # start on a whole line
        parts.append(tail.strip())
    return "\n\n".join(p for p in parts if p)


def greedy(model, tok, prompt: str, n: int) -> str:
    ids = torch.tensor([tok.encode(prompt)])
    return tok.decode(generate(model, ids, n)[0].tolist())


def texts(cap: int = 4000) -> dict[str, str]:
    filed = held_out_excerpts(cap=cap)
    return {"the-verdict": fetch("the-verdict").read_text(encoding="utf-8"),
            "held-out, as filed": filed,
            "held-out, unwrapped": "\n\n".join(unwrap_paragraphs(p) for p in filed.split("\n\n"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs=2, help="two stand-in folders (OpenAI layout)")
    p.add_argument("--blimp", type=int, default=6700, help="BLiMP pairs (spread over the 67 paradigms)")
    p.add_argument("--tokens", type=int, default=40, help="greedy tokens per sample")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chars", type=int, default=4000, help="held-out characters per work (at most)")
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = gpt2_tokenizer()
    corpora = texts(args.chars)
    results: dict = {"models": {}, "texts": {k: len(v.encode()) for k, v in corpora.items()}}
    reports = {}
    for folder in args.models:
        name = Path(folder).name
        model = from_tf_checkpoint(folder)
        t0 = time.perf_counter()
        bpb = {k: bits_per_byte(model, tok, v, desc=f"{name}: {k}") for k, v in corpora.items()}
        reports[name] = evaluate(model, tok, ["blimp"], limit=args.blimp, name=name, cache_dir=False)
        samples = {q: greedy(model, tok, q, args.tokens) for q in PROMPTS}
        results["models"][name] = {
            "bits_per_byte": {k: r["bits_per_byte"] for k, r in bpb.items()},
            "token_perplexity": {k: r["token_perplexity"] for k, r in bpb.items()},
            "blimp": {"n": reports[name]["tasks"]["blimp"]["n"], "acc": reports[name]["tasks"]["blimp"]["acc"],
                      "ci95": reports[name]["tasks"]["blimp"]["ci95"]},
            "samples": samples, "seconds": time.perf_counter() - t0}
    a, b = (Path(m).name for m in args.models)
    results["blimp_paired"] = paired_test(reports[b], reports[a], task="blimp")  # b − a
    print(markdown(results, a, b))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return 0


def markdown(r: dict, a: str, b: str) -> str:
    ma, mb = r["models"][a], r["models"][b]
    lines = [f"| measure | {a} | {b} | {b} − {a} |", "|---|---:|---:|---:|"]
    for k in r["texts"]:
        x, y = ma["bits_per_byte"][k], mb["bits_per_byte"][k]
        lines.append(f"| bits per byte, {k} ({r['texts'][k]:,} bytes) | {x:.3f} | {y:.3f} | {y - x:+.3f} |")
    pt = r["blimp_paired"]
    lines.append(f"| BLiMP accuracy ({ma['blimp']['n']:,} pairs) | {ma['blimp']['acc']:.3f} | "
                 f"{mb['blimp']['acc']:.3f} | {pt['diff']:+.3f} [{pt['ci95'][0]:+.3f}, {pt['ci95'][1]:+.3f}], "
                 f"McNemar p = {pt['p_value']:.2g} |")
    lines += ["", f"| prompt | {a} | {b} |", "|---|---|---|"]
    for q in PROMPTS:
        cells = [repr(m["samples"][q][len(q):]).replace("|", "\\|") for m in (ma, mb)]
        lines.append(f"| {q} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
