"""``llm-companion finetune``: LoRA instruction tuning (``--method sft``) or DPO (``--method dpo``), chapter 10, or
GRPO against a verifiable reward (``--method grpo``), chapter 11.

Trains LoRA adapters on the model given by ``--model`` (``smollm2``, a ``.gguf`` file or a saved GPT folder,
as ``llm-companion generate`` takes them), reports the held-out validation measure before and after
(answer-only loss for SFT; DPO loss, preference accuracy and reward margin for DPO; greedy accuracy on the
task's validation problems for GRPO, whose training prompts come from :mod:`llm_companion.rl.tasks`, not
``--data``) and writes the adapter
atomically to ``--out`` (``adapter.safetensors`` + ``adapter.json``). ``llm-companion chat --adapter DIR`` and
``generate --adapter DIR`` load it.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

from llm_companion.cli.generate import load_any
from llm_companion.finetune.adapters import save_adapter
from llm_companion.finetune.chat_sft import ChatSFTDataset, answer_losses, chat_collator, finetune_sft
from llm_companion.finetune.dpo import (
    check_beta,
    encode_pairs,
    load_preference_data,
    pair_logprobs,
    preference_metrics,
    reference_logprobs,
    split_preferences,
    train_dpo,
)
from llm_companion.finetune.instruct import load_instruction_data
from llm_companion.finetune.lora import apply_lora
from llm_companion.rl.baselines import greedy_accuracy, prompt_ids, verifier_reward
from llm_companion.rl.tasks import TWO_DIGIT_SUMS
from llm_companion.rl.trainer import GRPOConfig, train_grpo

GRPO_TARGETS = "q,k,v,o,gate,up,down"   # GRPO's default: every linear layer of the blocks (measured in chapter 11)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", metavar="NAME|PATH",
                   help="'smollm2' (default), a .gguf file, or a folder of a saved GPT model")
    p.add_argument("--method", choices=("sft", "dpo", "grpo"), required=True,
                   help="sft: instruction tuning on chapter 7's data; dpo: preference tuning on its preference set; "
                        "grpo: reinforcement learning on two-digit sums checked by a verifier (chapter 11)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the adapter to")
    p.add_argument("--data", type=Path, default=None, metavar="JSON",
                   help="records to train on (default: instruction-data / instruction-data-with-preference)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use only the first N records of each split (train/validation/test)")
    p.add_argument("--batch-size", type=int, default=4, help="records (pairs for DPO) per step (default 4)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 1e-3 for sft and grpo, 5e-4 for dpo)")
    p.add_argument("--beta", type=float, default=None,
                   help="DPO's β: how far from the reference (default 0.1); GRPO's KL weight (default 0: off)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    p.add_argument("--targets", default=None, metavar="PATTERNS",
                   help=f"comma-separated layer-name patterns to adapt (default 'q,v'; grpo: '{GRPO_TARGETS}')")
    p.add_argument("--max-length", type=int, default=256, help="longest training sequence in tokens (sft)")
    p.add_argument("--max-response", type=int, default=128, help="longest answer in tokens (dpo)")
    g = p.add_argument_group("grpo")
    g.add_argument("--group-size", type=int, default=8, help="completions sampled per prompt (default 8)")
    g.add_argument("--max-new-tokens", type=int, default=16, help="longest completion in tokens (default 16)")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    g.add_argument("--eval-problems", type=int, default=100, metavar="N",
                   help="validation problems scored greedily before and after (default 100; 0: none)")
    g.add_argument("--checkpoint", type=Path, default=None, metavar="DIR",
                   help="checkpoint folder: written during training, resumed from when it exists")
    p.add_argument("--seed", type=int, default=123, help="random seed (default 123)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")


def _check(args) -> None:
    for name in ("steps", "batch_size", "rank"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if args.method == "grpo":
        _check_grpo(args)
        return
    if args.beta is None:
        args.beta = 0.1
    try:
        check_beta(args.beta)
    except ValueError as e:
        raise ValueError(f"--{e}") from None


def _check_grpo(args) -> None:
    if args.data is not None or args.limit is not None:
        raise ValueError("--data and --limit are for --method sft/dpo; grpo trains on the task's own problems")
    if args.group_size < 2:
        raise ValueError(f"--group-size must be at least 2 (GRPO compares a group's completions), "
                         f"got {args.group_size}")
    if args.max_new_tokens < 1 or args.eval_problems < 0:
        raise ValueError("--max-new-tokens must be at least 1 and --eval-problems at least 0")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be a positive number, got {args.temperature}")
    if args.beta is not None and not args.beta >= 0:
        raise ValueError(f"--beta must be 0 or more for grpo (the KL weight), got {args.beta}")


def main(args: argparse.Namespace) -> int:
    _check(args)
    torch.manual_seed(args.seed)
    if args.method == "grpo":
        parts, default_data = None, "two-digit sums (llm_companion.rl.tasks)"
    elif args.method == "dpo":
        parts = split_preferences(load_preference_data(args.data), limit=args.limit)   # empty → one-line error
        default_data = "instruction-data-with-preference"
    else:
        parts = split_preferences(load_instruction_data(args.data), limit=args.limit)  # chapter 7's 85/5/10
        default_data = "instruction-data"
    with contextlib.redirect_stdout(sys.stderr):
        model, tokenizer, description = load_any(args.model, device=args.device)
    targets = args.targets or (GRPO_TARGETS if args.method == "grpo" else "q,v")
    apply_lora(model, rank=args.rank, alpha=args.alpha, targets=[t for t in targets.split(",") if t])
    meta = {"base_model": description, "method": args.method, "data": str(args.data or default_data),
            "train_records": len(parts.train) if parts else len(TWO_DIGIT_SUMS.splits.train), "steps": args.steps,
            "batch_size": args.batch_size, "seed": args.seed}
    if args.method == "grpo":
        meta |= _grpo(model, tokenizer, args)
    elif args.method == "dpo":
        meta |= _dpo(model, tokenizer, parts, args)
    else:
        meta |= _sft(model, tokenizer, parts, args)
    out = save_adapter(model, args.out, meta)
    print(f"adapter written to {out}")
    return 0


def _grpo(model, tokenizer, args) -> dict:
    if not hasattr(tokenizer, "special_tokens") or "<|im_end|>" not in tokenizer.special_tokens:
        raise ValueError(f"--method grpo needs a chat model with the ChatML template (smollm2 or a .gguf file); "
                         f"--model {args.model} has none")
    splits = TWO_DIGIT_SUMS.splits
    cfg = GRPOConfig(steps=args.steps, prompts_per_step=args.batch_size, group_size=args.group_size,
                     max_new_tokens=args.max_new_tokens, temperature=args.temperature, lr=args.lr or 1e-3,
                     beta=args.beta or 0.0, track_kl=bool(args.beta), seed=args.seed)
    val = splits.validation[:args.eval_problems]
    before = greedy_accuracy(model, tokenizer, val).accuracy if val else None
    history = train_grpo(model, prompt_ids(tokenizer, splits.train), verifier_reward(tokenizer, splits.train), cfg,
                         eos_id=tokenizer.eos_token_id, checkpoint_dir=args.checkpoint)
    after = greedy_accuracy(model, tokenizer, val).accuracy if val else None
    last = history.steps[-1]
    print(f"last step: mean reward {last['reward']:.3f}, completion length {last['length']:.1f} tokens")
    if val:
        print(f"validation ({len(val)} problems, greedy): accuracy {before:.1%} → {after:.1%}")
    return {"beta": cfg.beta, "lr": cfg.lr, "group_size": cfg.group_size, "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature, "task": "two-digit sums",
            "validation": {"problems": len(val), "accuracy_before": before, "accuracy_after": after}}


def _dpo(model, tokenizer, parts, args) -> dict:
    lr = args.lr or 5e-4
    train = encode_pairs(parts.train, tokenizer, max_response=args.max_response)
    val = encode_pairs(parts.val, tokenizer, max_response=args.max_response)
    ref_val = reference_logprobs(model, val)
    before = preference_metrics(ref_val, ref_val, args.beta)
    train_dpo(model, train, beta=args.beta, steps=args.steps, lr=lr, batch_size=args.batch_size, seed=args.seed)
    after = preference_metrics(pair_logprobs(model, val), ref_val, args.beta)
    print(f"validation ({len(val)} pairs): DPO loss {before['loss']:.4f} → {after['loss']:.4f}, "
          f"preference accuracy {after['accuracy']:.1%}, reward margin {after['margin']:+.3f}")
    return {"beta": args.beta, "lr": lr, "max_response": args.max_response,
            "validation": {"pairs": len(val), "loss_before": before["loss"], "loss_after": after["loss"],
                           "accuracy": after["accuracy"], "margin": after["margin"]}}


def _sft(model, tokenizer, parts, args) -> dict:
    lr = args.lr or 1e-3
    val = ChatSFTDataset(parts.val, tokenizer)
    coll = chat_collator(tokenizer, max_length=args.max_length)
    before = float(answer_losses(model, val, coll).mean())
    finetune_sft(model, tokenizer, parts.train, steps=args.steps, lr=lr, batch_size=args.batch_size,
                 max_length=args.max_length, seed=args.seed)
    after = float(answer_losses(model, val, coll).mean())
    print(f"validation ({len(val)} records): answer-only loss {before:.4f} → {after:.4f}")
    return {"lr": lr, "max_length": args.max_length,
            "validation": {"records": len(val), "answer_loss_before": before, "answer_loss_after": after}}
