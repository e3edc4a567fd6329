"""``llm-companion classify TEXT``: label one message with the spam classifier chapter 6 saves."""
from __future__ import annotations

import argparse

from llm_companion.finetune.classification import classify


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="the message to classify (quote it)")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="folder of a saved classifier (default: models/spam-classifier)")


def main(args: argparse.Namespace) -> int:
    label, prob = classify(args.text, model_dir=args.model)
    print(f"{label} (probability {prob:.3f})")
    return 0
