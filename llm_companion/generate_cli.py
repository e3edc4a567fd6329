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

SMOLLM2_NAMES = ("smollm2", "smollm2-135m-instruct")


class ModelNotFound(FileNotFoundError):
    """A ``--model`` that names no model this command can load."""


def load_any(spec: str | Path, *, device: str = "cpu") -> tuple[nn.Module, object, str]:
    """``(model in eval mode, tokenizer, one-line description)`` for a ``--model`` value (see the module doc)."""
    if str(spec).lower() in SMOLLM2_NAMES:
        from .smollm2 import load_smollm2

        model, tokenizer, info = load_smollm2(device=device)
        return model, tokenizer, info.describe()
    path = Path(spec)
    if not path.exists():
        raise ModelNotFound(f"--model {spec!r}: no such file or folder; use 'smollm2', a .gguf file, or a "
                            f"folder written by save_model/save_assistant or in OpenAI's GPT-2 layout")
    if path.is_file() and path.suffix == ".gguf":
        from .gguf_file import read_gguf
        from .llama import load_llama_gguf
        from .tokenizer import gguf_tokenizer

        contents = read_gguf(path)
        model = load_llama_gguf(contents, device=device)
        return model, gguf_tokenizer(contents), f"{path.name} ({model.num_parameters():,} parameters, GGUF)"
    from .tokenizer import gpt2_tokenizer

    folder = path if path.is_dir() else path.parent
    if (folder / "config.json").is_file() and (folder / "SHA256SUMS").is_file():
        from .checkpoint import load_model

        model = load_model(folder, device=device)
        kind = "saved GPT"
    elif (folder / "hparams.json").is_file():
        from .gpt2 import TensorFlowMissing, from_tf_checkpoint

        try:
            model = from_tf_checkpoint(folder).to(device)
        except TensorFlowMissing as e:
            raise ModelNotFound(f"--model {spec}: OpenAI-layout checkpoint, {e}") from None
        kind = "OpenAI-layout GPT-2"
    elif (folder / "model.safetensors").is_file():
        from .gpt2 import from_safetensors

        model = from_safetensors(folder).to(device)
        kind = "GPT-2 safetensors"
    else:
        raise ModelNotFound(f"--model {spec}: not a model folder (no config.json + SHA256SUMS, hparams.json or "
                            f"model.safetensors) and not a .gguf file")
    return model.eval(), gpt2_tokenizer(), f"{folder} ({model.num_parameters():,} parameters, {kind})"


def _token_bytes(tokenizer, token: int) -> bytes:
    return tokenizer.decode_single_token_bytes(token)


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
                   help="a LoRA adapter folder written by `llm-companion finetune` (chapter 10)")
    from .quantize import add_weights_argument

    add_weights_argument(p)


def main(args: argparse.Namespace, out=None) -> int:
    from .generation import generate_stream

    out = out or sys.stdout
    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    if not args.prompt:
        raise ValueError("the prompt is empty; pass the text to continue")
    with contextlib.redirect_stdout(sys.stderr):  # progress lines must not mix with the generated text
        model, tokenizer, description = load_any(args.model, device=args.device)
    if getattr(args, "adapter", None) is not None:
        from .adapters import load_adapter

        load_adapter(model, args.adapter)
        description += f" + adapter {args.adapter}"
    if getattr(args, "weights", "fp32") != "fp32":
        from .quantize import quantize_for_inference

        quantize_for_inference(model, args.weights)
        description += f", {args.weights} weights"
    if args.show_model:
        print(f"model: {description}", file=sys.stderr, flush=True)
    ids = tokenizer.encode(args.prompt, disallowed_special=())
    idx = torch.tensor([ids], device=args.device)                               # (1, T)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    temperature = 0.0 if args.greedy else args.temperature
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span two tokens
    for tok in generate_stream(model, idx, args.max_new_tokens, temperature=temperature, top_k=args.top_k,
                               top_p=args.top_p, eos_id=getattr(tokenizer, "eot_token", None), generator=gen):
        out.write(decoder.decode(_token_bytes(tokenizer, tok)))
        out.flush()
    out.write(decoder.decode(b"", final=True) + "\n")
    out.flush()
    return 0
