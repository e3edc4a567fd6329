"""``llm-companion generate``: continue a prompt with any model the book can load, printing tokens as they come.

``--model`` takes ``smollm2`` (SmolLM2-135M-Instruct, fetched from the data layer), a ``.gguf`` file of a
Llama-architecture model, or a folder of a GPT model the book saved: ``checkpoint.save_model`` /
``chat.save_assistant`` (``model.safetensors`` + ``config.json``), OpenAI's layout (``hparams.json`` + TF
checkpoint, as the stand-in is exported; needs TensorFlow) or a Hugging Face GPT-2 ``model.safetensors``.
The prompt is continued as plain text (no chat template: ``llm-companion chat --model smollm2`` has that).
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import sys
from pathlib import Path

import torch
from torch import nn

from llm_companion.cli.errors import UserError
from llm_companion.data.gguf_file import read_gguf
from llm_companion.data.tokenizer import gguf_tokenizer, gpt2_tokenizer, token_bytes
from llm_companion.finetune.adapters import prepare_for_inference
from llm_companion.inference.generation import generate_stream
from llm_companion.inference.quantize import add_weights_argument, quantizes
from llm_companion.inference.smollm2 import SMOLLM2_NAMES, load_smollm2
from llm_companion.models.checkpoint import load_model
from llm_companion.models.gguf_checkpoint import load_llama_gguf
from llm_companion.models.openai_checkpoint import TensorFlowMissing, from_safetensors, from_tf_checkpoint
from llm_companion.training.starting_weights import folder_format


class ModelNotFound(FileNotFoundError):
    """A ``--model`` that names no model this command can load."""


def load_any(spec: str | Path, *, device: str = "cpu") -> tuple[nn.Module, object, str]:
    """``(model in eval mode, tokenizer, one-line description)`` for a ``--model`` value (see the module doc)."""
    if str(spec).lower() in SMOLLM2_NAMES:
        model, tokenizer, info = load_smollm2(device=device)
        return model, tokenizer, info.describe()
    path = Path(spec)
    if not path.exists():
        raise ModelNotFound(f"--model {spec!r}: no such file or folder; use 'smollm2', a .gguf file, or a "
                            f"folder written by save_model/save_assistant or in OpenAI's GPT-2 layout")
    if path.is_file() and path.suffix == ".gguf":
        contents = read_gguf(path)
        model = load_llama_gguf(contents, device=device)
        return model, gguf_tokenizer(contents), f"{path.name} ({model.num_parameters():,} parameters, GGUF)"
    folder = path if path.is_dir() else path.parent
    fmt = folder_format(folder)
    if fmt == "saved":
        model = load_model(folder, device=device)
        kind = "saved GPT"
    elif fmt == "openai-gpt2":
        try:
            model = from_tf_checkpoint(folder).to(device)
        except TensorFlowMissing as e:
            raise ModelNotFound(f"--model {spec}: OpenAI-layout checkpoint, {e}") from None
        kind = "OpenAI-layout GPT-2"
    elif fmt == "hf-safetensors":
        model = from_safetensors(folder).to(device)
        kind = "GPT-2 safetensors"
    else:
        raise ModelNotFound(f"--model {spec}: not a model folder (no model.safetensors + config.json + SHA256SUMS, "
                            f"OpenAI's hparams.json + model.ckpt.* or model.safetensors) and not a .gguf file")
    return model.eval(), gpt2_tokenizer(), f"{folder} ({model.num_parameters():,} parameters, {kind})"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", metavar="PROMPT", help="text to continue")
    p.add_argument("--model", required=True, metavar="NAME|PATH",
                   help="'smollm2', a .gguf file, or a folder of a saved GPT model")
    p.add_argument("--max-new-tokens", type=int, default=60, help="tokens to generate (default 60)")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token (same as --temperature 0)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample only from the smallest set with this mass")
    p.add_argument("--seed", type=int, default=123, help="random seed for sampling (default 123)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    p.add_argument("--show-model", action="store_true", help="print which weights ran (to stderr) first")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="a LoRA adapter folder in peft's format, written by `llm-companion finetune` (chapter 10) "
                        "or by peft's save_pretrained")
    add_weights_argument(p)


def main(args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if not args.prompt:
        raise UserError("the prompt is empty; pass the text to continue")
    with contextlib.redirect_stdout(sys.stderr):  # progress lines must not mix with the generated text
        model, tokenizer, description = load_any(args.model, device=args.device)
    prepare_for_inference(model, adapter=args.adapter, weights=args.weights)
    if args.adapter is not None:
        description += f" + adapter {args.adapter}"
    if quantizes(args.weights):
        description += f", {args.weights} weights"
    if args.show_model:
        print(f"model: {description}", file=sys.stderr, flush=True)
    ids = tokenizer.encode(args.prompt, disallowed_special=())
    idx = torch.tensor([ids], device=args.device)                               # (1, T)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    temperature = 0.0 if args.greedy else args.temperature
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span two tokens
    for tok in generate_stream(model, idx, args.max_new_tokens, temperature=temperature, top_k=args.top_k,
                               top_p=args.top_p, eos_id=getattr(tokenizer, "eot_token", None), generator=gen,
                               fast=True):
        out.write(decoder.decode(token_bytes(tokenizer, tok)))
        out.flush()
    out.write(decoder.decode(b"", final=True) + "\n")
    out.flush()
    return 0
