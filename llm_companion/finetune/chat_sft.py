"""Instruction tuning (SFT) of a chat model through its own chat template, with LoRA (chapter 10).

Chapter 7's recipe — records from :mod:`llm_companion.finetune.instruct`, prompt and answer tokenized apart, the
collator's ``-100`` mask on every target that is not part of the answer — applied to a model that already
answers. The only change is the prompt: SmolLM2 was instruction-tuned on ChatML, so a record becomes the
user turn of :func:`llm_companion.inference.smollm2.encode_chat` (with the default system prompt) and the answer ends
with ``<|im_end|>``, the token SmolLM2 stops at. A GPT-2 tokenizer (no ChatML markers) gets chapter 7's
Alpaca prompt and ``<|endoftext|>`` instead, so the same functions tune chapter 7's assistant.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from llm_companion.data.tokenizer import GPT2_EOT_ID, encode_text
from llm_companion.finetune.instruct import Example, InstructionCollator, format_prompt, instruction_loader
from llm_companion.inference.generation import generate
from llm_companion.inference.smollm2 import IM_END, IM_START, encode_chat
from llm_companion.progress import progress
from llm_companion.training.loop import TrainConfig, train
from llm_companion.training.losses import IGNORE_INDEX


def uses_chatml(tokenizer) -> bool:
    """True for a tokenizer with ChatML control tokens (SmolLM2's GGUF tokenizer)."""
    return IM_START in (getattr(tokenizer, "special_tokens", None) or {})


def user_message(record: dict) -> str:
    """The user turn of a record: its instruction, then its input (if any) after a blank line."""
    text = record["instruction"]
    if record.get("input"):
        text += "\n\n" + record["input"]
    return text


def prompt_ids(tokenizer, record: dict) -> list[int]:
    """Tokens the model sees before it answers: ChatML's user turn + ``<|im_start|>assistant``, or Alpaca."""
    if uses_chatml(tokenizer):
        return encode_chat(tokenizer, user_message(record))
    return encode_text(tokenizer, format_prompt(record, "alpaca"))


def end_id(tokenizer) -> int:
    """The token that ends an answer: ``<|im_end|>`` for ChatML, ``<|endoftext|>`` for GPT-2."""
    if uses_chatml(tokenizer):
        return tokenizer.special_tokens[IM_END]
    return getattr(tokenizer, "eot_token", GPT2_EOT_ID)


def answer_ids(tokenizer, text: str) -> list[int]:
    """Tokens of an answer, without the end token (the collator appends it)."""
    return list(tokenizer.encode(text)) if uses_chatml(tokenizer) else encode_text(tokenizer, text)


class ChatSFTDataset(Dataset):
    """Records tokenized once: item ``i`` is an :class:`~llm_companion.finetune.instruct.Example` (prompt + answer).

    ``key`` names the field that holds the answer (``output`` in chapter 7's data).
    """

    def __init__(self, records: Sequence[dict], tokenizer, *, key: str = "output"):
        self.records = list(records)
        self.examples = []
        for rec in self.records:
            prompt = prompt_ids(tokenizer, rec)
            self.examples.append(Example(prompt + answer_ids(tokenizer, rec[key]), len(prompt)))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


def chat_collator(tokenizer, *, max_length: int | None = None) -> InstructionCollator:
    """Chapter 7's collator with the answer mask on, padding (and ending) with :func:`end_id`."""
    return InstructionCollator(pad_token_id=end_id(tokenizer), mask_prompt=True, allowed_max_length=max_length)


@torch.no_grad()
def answer_losses(model: nn.Module, dataset: ChatSFTDataset, collator: InstructionCollator, *,
                  batch_size: int = 8) -> torch.Tensor:
    """Answer-only cross-entropy of every example (mean over its answer tokens), shape (N,).

    Per example rather than per batch, so two models can be compared pair by pair on the same examples.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    loader = instruction_loader(dataset, collator, batch_size=batch_size)
    for x, y in progress(loader, desc="answer loss", unit="batch", disable=len(loader) < 2):
        x, y = x.to(device), y.to(device)
        logits = model(x)                                                   # (B, T, V)
        nll = nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none",
                                          ignore_index=IGNORE_INDEX).view_as(y)  # (B, T)
        n = (y != IGNORE_INDEX).sum(1).clamp(min=1)
        out.append(nll.sum(1) / n)
    model.train(was_training)
    return torch.cat(out).cpu()


@torch.no_grad()
def generate_answers(model: nn.Module, tokenizer, records: Sequence[dict], *, max_new_tokens: int = 64,
                     batch_size: int = 8, desc: str = "answers") -> list[str]:
    """Greedy answers to each record's prompt (through :func:`prompt_ids`), stopped at :func:`end_id`.

    Prompts of the same length decode together, up to ``batch_size`` at a time: one forward per token for
    the whole group, and no padding (the model takes no attention mask), so each answer is the one it
    would get alone.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stop = end_id(tokenizer)
    prompts = [prompt_ids(tokenizer, rec) for rec in records]
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):
        groups.setdefault(len(ids), []).append(i)
    batches = [g[s:s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]
    answers = [""] * len(records)
    bar = progress(total=len(records), desc=desc, unit="answer", disable=len(records) < 2)
    for rows in batches:
        idx = torch.tensor([prompts[i] for i in rows], device=device)
        out = generate(model, idx, max_new_tokens, temperature=0.0, eos_id=stop)[:, idx.shape[1]:].tolist()
        for i, new in zip(rows, out):
            new = new[:new.index(stop)] if stop in new else new
            answers[i] = tokenizer.decode(new).strip()
        bar.update(len(rows))
    bar.close()
    model.train(was_training)
    return answers


def finetune_sft(model: nn.Module, tokenizer, records: Sequence[dict], *, steps: int, lr: float = 1e-3,
                 batch_size: int = 4, max_length: int | None = 256, seed: int = 123):
    """Instruction-tune ``model`` (LoRA already applied) on ``records`` for ``steps`` optimizer steps.

    Runs the library's :func:`~llm_companion.training.loop.train` with its default loss (cross-entropy that
    skips ``-100`` targets) and no weight decay on the adapters; returns its :class:`History`.
    """

    if not records:
        raise ValueError("no training records; use a larger --limit or another split")
    dataset = ChatSFTDataset(records, tokenizer)
    loader = instruction_loader(dataset, chat_collator(tokenizer, max_length=max_length), batch_size=batch_size,
                                shuffle=True, drop_last=len(dataset) >= batch_size, seed=seed)
    epochs = -(-steps // len(loader))
    cfg = TrainConfig(epochs=epochs, max_steps=steps, lr=lr, weight_decay=0.0, eval_every=None, sample_every=None,
                      log_every=max(1, steps // 5), seed=seed)
    model.train()
    history = train(model, loader, None, cfg)
    model.eval()
    return history
