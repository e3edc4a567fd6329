"""``llm-companion eval``: a model's report card on the standard sets (chapter 9).

``--adapter DIR`` scores the model with a LoRA adapter in peft's format applied (chapter 10's tuned SmolLM2);
the row is named after the model and the adapter's folder, and the score cache keys on the adapted weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llm_companion.cli.errors import UserError
from llm_companion.cli.generate import load_any
from llm_companion.data.tokenizer import gpt2_tokenizer
from llm_companion.evaluation.harness import evaluate
from llm_companion.evaluation.report import markdown_table, write_json
from llm_companion.evaluation.tasks import TASKS, UnknownTaskError, check_tasks
from llm_companion.finetune.adapters import prepare_for_inference
from llm_companion.finetune.assistant import load_assistant, tokenizer_for
from llm_companion.inference.quantize import add_weights_argument, quantizes
from llm_companion.inference.smollm2 import SMOLLM2_NAMES
from llm_companion.training.starting_weights import WeightsUnavailable, load_pretrained

MODEL_NAMES = ("smollm2", "standin", "gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "assistant")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME|DIR",
                   help=f"one of {', '.join(MODEL_NAMES)}, a .gguf file, or a model folder (the book's "
                        "checkpoint, OpenAI's or Hugging Face's GPT-2 layout)")
    p.add_argument("--tasks", default="hellaswag,blimp", metavar="LIST",
                   help=f"comma list of {', '.join(TASKS)}, or all (default: hellaswag,blimp)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="score N items per task, chosen by a fixed seeded rule (default: every item)")
    p.add_argument("--seed", type=int, default=0, help="seed of the item choice (default 0)")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the report card as JSON here")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="a LoRA adapter folder (peft's format, e.g. from `llm-companion finetune`) to score the "
                        "base model with")
    add_weights_argument(p)
    p.add_argument("--no-cache", action="store_true",
                   help="do not read or write the score cache (data/eval-cache/, or $LLM_COMPANION_EVAL_CACHE)")


def load_for_eval(spec: str):
    """``(model, tokenizer, name)`` for a ``--model`` value."""

    low = spec.lower()
    if low == "assistant":
        model, meta = load_assistant()
        base = meta.get("base")
        base = base.get("name") if isinstance(base, dict) else base
        return model, tokenizer_for(meta), f"assistant (tuned from {base})" if base else "assistant (chapter 7)"
    if low == "standin" or low.startswith("gpt2-"):
        try:
            if low == "standin":
                model, info = load_pretrained("gpt2-small", allow_standin=True, offline=True)
            else:
                model, info = load_pretrained(low, allow_standin=False)
        except (WeightsUnavailable, KeyError, ValueError) as e:
            raise UserError(str(e).splitlines()[0]) from None
        return model, gpt2_tokenizer(), info.name
    if low not in SMOLLM2_NAMES and not Path(spec).exists():
        raise UserError(f"unknown model {spec!r}; valid: {', '.join(MODEL_NAMES)}, a .gguf file or a model folder")
    model, tokenizer, description = load_any(spec)
    return model, tokenizer, ("SmolLM2-135M-Instruct" if low in SMOLLM2_NAMES else description)


def main(args: argparse.Namespace) -> int:
    try:
        tasks = check_tasks(args.tasks)
    except UnknownTaskError as e:
        raise UserError(str(e)) from None
    if args.limit is not None and args.limit <= 0:
        raise UserError(f"--limit must be a positive number of items, got {args.limit}")
    model, tokenizer, name = load_for_eval(args.model)
    model = prepare_for_inference(model, adapter=args.adapter, weights=args.weights)
    if args.adapter is not None:
        name = f"{name} + adapter {Path(args.adapter).name}"
    if quantizes(args.weights):
        name = f"{name} [{args.weights}]"
    result = evaluate(model, tokenizer, tasks, limit=args.limit, seed=args.seed, name=name,
                      cache_dir=False if args.no_cache else None)
    print(markdown_table(result))
    if args.out:
        write_json(result, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
