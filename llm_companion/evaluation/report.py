"""The report card: a Markdown table of a result, and the JSON file other tools read."""
from __future__ import annotations

import json
import os

from llm_companion.atomic import atomic_file

# published scores to print beside ours (see ../shared/data/SOURCES.md); each with the scoring style used
PUBLISHED = {
    "gpt2": {"hellaswag": (0.2955, "acc_norm, karpathy hellaswag.py (norm. by tokens)"),
             "blimp": (0.830, "BLiMP paper, whole-sentence log-prob"),
             "lambada": (0.4599, "GPT-2 paper, last word greedy")},
    "smollm2-135m-base": {"hellaswag": (0.421, "model card, lighteval"), "piqa": (0.684, "model card, lighteval"),
                          "openbookqa": (0.346, "model card, lighteval"),
                          "arc": (0.439, "model card, lighteval, mean of easy and challenge")},
}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _interval(ci) -> str:
    return "–" if ci is None else f"{_pct(ci[0])}–{_pct(ci[1])}"


def markdown_table(result: dict) -> str:
    """One row per task: n, acc and acc_norm each with its own Wilson 95% interval, and the task's own extra
    number."""
    lines = [f"**{result['model']}**", "",
             "| task | n | acc % | acc 95% CI | acc_norm % | acc_norm 95% CI | other |",
             "|---|---:|---:|---|---:|---|---|"]
    for task, r in result["tasks"].items():
        other = ""
        if task == "lambada" and "perplexity" in r:
            other = f"last-word perplexity {r['perplexity']:.1f}"
        elif task == "bpb":
            other = f"{r['bits_per_byte']:.3f} bits/byte on {r['text']} ({r['bytes']:,} bytes)"
        if r.get("truncated"):
            other += f"{'; ' if other else ''}{r['truncated']} truncated from the left"
        ci, ci_norm = (_interval(r.get(key)) for key in ("ci95", "ci95_norm"))
        lines.append(f"| {task} | {r['n']:,} | {_pct(r['acc'])} | {ci} | {_pct(r['acc_norm'])} | {ci_norm} | {other} |")
    return "\n".join(lines)


def write_json(result: dict, path: str | os.PathLike) -> None:
    """Write the result atomically (a crash never leaves half a file)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
