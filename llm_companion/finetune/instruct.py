"""Instruction fine-tuning (supervised fine-tuning, SFT): data, prompt format, batching and evaluation.

The pipeline of chapter 7, one function per step:

1. :func:`load_instruction_data` fetches and validates the 1,100 Alpaca-style records;
2. :func:`format_prompt` / :func:`format_example` render a record in a prompt style (``alpaca``, ``phi3``);
3. :func:`split_records` makes the deterministic 85/5/10 train/validation/test split;
4. :class:`InstructionDataset` pre-tokenizes, :class:`InstructionCollator` pads, shifts and masks a batch;
5. :func:`llm_companion.training.loop.train` fine-tunes with its default loss, which ignores ``-100`` targets;
6. :func:`generate_responses` / :func:`extract_response` answer the test set;
7. :func:`rouge_l` and :func:`response_table` evaluate the answers; the optional LLM-as-judge (a local
   Ollama server) is :mod:`llm_companion.finetune.judge`.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llm_companion.atomic import write_json
from llm_companion.data.artifacts import fetch
from llm_companion.data.download import data_dir
from llm_companion.data.tokenizer import GPT2_EOT_ID as EOT_ID  # <|endoftext|>: ends every answer, and pads
from llm_companion.data.tokenizer import encode_text
from llm_companion.inference.generation import generate
from llm_companion.progress import progress
from llm_companion.training.losses import IGNORE_INDEX  # targets equal to it add nothing to the loss

RESPONSES_FILE = "instruction-data-with-response.json"


class InstructionDataError(ValueError):
    """A record of an instruction data set has a missing or mistyped field."""


# --------------------------------------------------------------------------------------------- data
def validate_records(records: Any) -> list[dict[str, str]]:
    """Check every record and return them as dicts with ``instruction``, ``input`` ("" if absent), ``output``.

    A bad record raises :class:`InstructionDataError` naming its index and the field.
    """
    if not isinstance(records, list):
        raise InstructionDataError(f"instruction data must be a JSON list of records, got {type(records).__name__}")
    clean = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InstructionDataError(f"record {i}: expected an object with 'instruction' and 'output', "
                                       f"got {type(rec).__name__}")
        for key in ("instruction", "output"):
            if key not in rec:
                raise InstructionDataError(f"record {i}: missing field {key!r}")
            if not isinstance(rec[key], str):
                raise InstructionDataError(f"record {i}: field {key!r} must be a string, "
                                           f"got {type(rec[key]).__name__}")
        if not rec["instruction"].strip():
            raise InstructionDataError(f"record {i}: field 'instruction' is empty")
        inp = rec.get("input", "")
        if inp is None:
            inp = ""
        if not isinstance(inp, str):
            raise InstructionDataError(f"record {i}: field 'input' must be a string (or absent), "
                                       f"got {type(inp).__name__}")
        clean.append({**rec, "instruction": rec["instruction"], "input": inp, "output": rec["output"]})
    return clean


def load_instruction_data(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """Read and validate an instruction data set (default: the book's ``instruction-data`` artifact)."""
    if path is None:
        path = fetch("instruction-data")
    with open(path, encoding="utf-8") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise InstructionDataError(f"{Path(path).name} is not valid JSON ({e}); re-fetch it with "
                                       f"`llm-companion fetch instruction-data`") from None
    return validate_records(records)


class Split(NamedTuple):
    train: list[dict]
    val: list[dict]
    test: list[dict]


def split_records(records: Sequence[dict], *, train_frac: float = 0.85, test_frac: float = 0.10,
                  seed: int | None = None) -> Split:
    """Deterministic train/validation/test split (85/5/10 by default).

    As in the reference book, the first ``train_frac`` of the records train, the next ``test_frac`` test and
    the rest validate. ``seed`` shuffles a copy first (with its own ``random.Random``).
    """
    if not (0 < train_frac < 1 and 0 <= test_frac < 1 and train_frac + test_frac <= 1):
        raise ValueError(f"need 0 < train_frac < 1 and train_frac + test_frac <= 1, "
                         f"got train_frac={train_frac}, test_frac={test_frac}")
    records = list(records)
    if seed is not None:
        random.Random(seed).shuffle(records)
    n_train = int(len(records) * train_frac)
    n_test = int(len(records) * test_frac)
    return Split(train=records[:n_train], val=records[n_train + n_test:],
                 test=records[n_train:n_train + n_test])


# --------------------------------------------------------------------------------------------- prompts
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")


@dataclass(frozen=True)
class PromptStyle:
    """How a record becomes text: ``prompt`` (instruction [+ input] + response header) then the answer.

    ``stops`` are markers that mean the model has started a new turn; a response is cut there.
    """

    name: str
    instruction: str          # format with {instruction}
    input: str                # format with {input}; used only when the record has one
    response_header: str
    stops: tuple[str, ...]


PROMPT_STYLES: dict[str, PromptStyle] = {
    "alpaca": PromptStyle(
        name="alpaca",
        instruction=ALPACA_PREAMBLE + "\n\n### Instruction:\n{instruction}",
        input="\n\n### Input:\n{input}",
        response_header="\n\n### Response:\n",
        stops=("###",),  # no answer in the data contains it: a header means a new section has begun
    ),
    # Microsoft's Phi-3 chat format (the tags are plain text to the GPT-2 tokenizer)
    "phi3": PromptStyle(
        name="phi3",
        instruction="<|user|>\n{instruction}",
        input="\n{input}",
        response_header="\n<|assistant|>\n",
        stops=("<|user|>", "<|assistant|>", "<|end|>"),
    ),
}


def prompt_style(style: str | PromptStyle) -> PromptStyle:
    """Look up a prompt style by name (``alpaca`` or ``phi3``)."""
    if isinstance(style, PromptStyle):
        return style
    try:
        return PROMPT_STYLES[style]
    except KeyError:
        raise ValueError(f"unknown prompt style {style!r}; use one of {', '.join(PROMPT_STYLES)}") from None


def format_input(record: dict, style: str | PromptStyle = "alpaca") -> str:
    """The instruction and, when the record has one, its input — without the response header."""
    st = prompt_style(style)
    text = st.instruction.format(instruction=record["instruction"])
    if record.get("input"):
        text += st.input.format(input=record["input"])
    return text


def format_prompt(record: dict | str, style: str | PromptStyle = "alpaca") -> str:
    """What the model sees before it answers: :func:`format_input` + the response header.

    A plain string is taken as an instruction without input (what a chat user types).
    """
    if isinstance(record, str):
        record = {"instruction": record, "input": ""}
    return format_input(record, style) + prompt_style(style).response_header


def format_example(record: dict, style: str | PromptStyle = "alpaca") -> str:
    """A whole training example: prompt followed by the reference answer."""
    return format_prompt(record, style) + record["output"]


def extract_response(text: str, prompt: str | None = None, style: str | PromptStyle = "alpaca") -> str:
    """The answer part of generated text.

    Drops ``prompt`` when ``text`` starts with it (and a leading response header a model may repeat), then
    cuts at ``<|endoftext|>`` or at a marker of a new section (for Alpaca, any ``###`` header).
    """
    st = prompt_style(style)
    if prompt is not None and text.startswith(prompt):
        text = text[len(prompt):]
    header = st.response_header.strip()
    if text.lstrip().startswith(header):
        text = text.lstrip()[len(header):]
    cut = len(text)
    for marker in ("<|endoftext|>", *st.stops):
        pos = text.find(marker)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut].strip()


class Example(NamedTuple):
    """One tokenized example: ``ids`` = prompt tokens + answer tokens; the first ``prompt_len`` are prompt."""

    ids: list[int]
    prompt_len: int


class InstructionDataset(Dataset):
    """Records tokenized once, up front: item ``i`` is an :class:`Example`.

    Prompt and answer are encoded separately and concatenated, so the prompt's tokens are exactly the ones
    the model sees at generation time (BPE never merges across the boundary).
    """

    def __init__(self, records: Sequence[dict], tokenizer, style: str | PromptStyle = "alpaca"):
        self.records = list(records)
        self.style = prompt_style(style)
        self.examples: list[Example] = []
        for rec in self.records:
            prompt = encode_text(tokenizer, format_prompt(rec, self.style))
            answer = encode_text(tokenizer, rec["output"])
            self.examples.append(Example(prompt + answer, len(prompt)))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    @property
    def lengths(self) -> list[int]:
        return [len(e.ids) for e in self.examples]


def pad_and_mask(batch: Sequence[Example | Sequence[int]], *, pad_token_id: int = EOT_ID,
                 ignore_index: int = IGNORE_INDEX, allowed_max_length: int | None = None,
                 mask_prompt: bool = False, device: str | torch.device | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Turn a list of token sequences into ``(inputs, targets, n_truncated)``.

    Each sequence gets one ``<|endoftext|>`` (the model must learn to stop), is padded with
    ``pad_token_id`` to the longest in the batch, and is shifted by one: ``targets[i, t] = seq[t + 1]``.
    Targets past that first end token become ``ignore_index``; with ``mask_prompt`` so do the targets
    that are prompt tokens (needs :class:`Example` items). Rows longer than ``allowed_max_length`` are cut
    to it; ``n_truncated`` counts them.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    items = [b if isinstance(b, Example) else Example(list(b), 0) for b in batch]
    if mask_prompt and any(e.prompt_len == 0 for e in items):
        raise ValueError("mask_prompt=True needs Example(ids, prompt_len) items (InstructionDataset gives them)")
    width = max(len(e.ids) for e in items) + 1           # + the end token
    if allowed_max_length is not None and allowed_max_length < 1:
        raise ValueError(f"allowed_max_length must be a positive number of tokens, got {allowed_max_length}")
    inputs, targets, n_truncated = [], [], 0
    for e in items:
        n = len(e.ids)
        padded = list(e.ids) + [pad_token_id] * (width - n)   # (width,)
        x = torch.tensor(padded[:-1])                          # (width - 1,)
        y = torch.tensor(padded[1:])
        # y[n - 1] is the first end token and stays a target; everything after it is padding.
        # Positions, not values, decide: a genuine <|endoftext|> inside a text is never masked.
        y[n:] = ignore_index
        if mask_prompt:
            y[:e.prompt_len - 1] = ignore_index               # targets that are still prompt tokens
        if allowed_max_length is not None:
            n_truncated += n > allowed_max_length             # its last token(s) or end target are lost
            x, y = x[:allowed_max_length], y[:allowed_max_length]
        inputs.append(x)
        targets.append(y)
    x, y = torch.stack(inputs), torch.stack(targets)           # (B, T)
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y, n_truncated


@dataclass
class InstructionCollator:
    """``collate_fn`` for a DataLoader of :class:`InstructionDataset`: :func:`pad_and_mask` with fixed options.

    Returns ``(inputs, targets)``; ``truncated`` counts the examples cut to ``allowed_max_length`` so far
    (of ``seen``), so a run can report how much text the context length cost.
    """

    pad_token_id: int = EOT_ID
    ignore_index: int = IGNORE_INDEX
    allowed_max_length: int | None = None
    mask_prompt: bool = False
    device: str | torch.device | None = None
    truncated: int = 0
    seen: int = 0

    def __call__(self, batch: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, cut = pad_and_mask(batch, pad_token_id=self.pad_token_id, ignore_index=self.ignore_index,
                                 allowed_max_length=self.allowed_max_length, mask_prompt=self.mask_prompt,
                                 device=self.device)
        self.truncated += cut
        self.seen += len(batch)
        return x, y


def instruction_loader(dataset: InstructionDataset, collator: InstructionCollator, *, batch_size: int,
                       shuffle: bool = False, drop_last: bool = False, seed: int = 123) -> DataLoader:
    """A DataLoader over ``dataset``; shuffling uses its own generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      collate_fn=collator, generator=gen, num_workers=0)


# --------------------------------------------------------------------------------------------- responses
def _eot_id(tokenizer) -> int:
    return getattr(tokenizer, "eot_token", EOT_ID)


def generate_responses(model: nn.Module, records: Sequence[dict], tokenizer, *, max_new_tokens: int = 256,
                       style: str | PromptStyle = "alpaca", temperature: float = 0.0, top_k: int | None = None,
                       seed: int = 123, desc: str = "responses") -> list[str]:
    """Answer each record's prompt (greedy by default), stopping at ``<|endoftext|>``; return the answers."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    eot = _eot_id(tokenizer)
    answers = []
    for rec in progress(records, desc=desc, unit="example", disable=len(records) < 2):
        prompt_ids = encode_text(tokenizer, format_prompt(rec, style))
        idx = torch.tensor([prompt_ids], device=device)                      # (1, T)
        out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, eos_id=eot,
                       generator=gen)
        new = [t for t in out[0, len(prompt_ids):].tolist() if t != eot]
        answers.append(extract_response(tokenizer.decode(new), style=style))
    return answers


def with_responses(records: Sequence[dict], responses: Sequence[str], key: str = "model_response") -> list[dict]:
    """Copies of ``records`` with each response stored under ``key``."""
    if len(records) != len(responses):
        raise ValueError(f"{len(records)} records but {len(responses)} responses")
    return [{**rec, key: resp} for rec, resp in zip(records, responses)]


def save_responses(records: Sequence[dict], path: str | os.PathLike | None = None) -> Path:
    """Save records with their model responses (default ``data/instruction-data-with-response.json``)."""
    if path is None:
        path = data_dir() / RESPONSES_FILE
    path = Path(path)
    write_json(path, list(records))
    return path


# --------------------------------------------------------------------------------------------- evaluation
def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference (``rouge-score``, Porter stemming), in [0, 1]."""
    from rouge_score import rouge_scorer  # an evaluation-only dependency, loaded when scoring

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [float(scorer.score(ref, pred)["rougeL"].fmeasure) for pred, ref in zip(predictions, references)]


def response_table(records: Sequence[dict], *, key: str = "model_response", n: int | None = None,
                   width: int | None = 120):
    """A pandas DataFrame of instruction, input, reference, response and ROUGE-L, one row per record.

    ``width`` shortens long texts with "…" so the table stays readable in a notebook.
    """
    import pandas as pd  # heavy; only the notebook table needs it

    rows = list(records)[:n]
    scores = rouge_l([r[key] for r in rows], [r["output"] for r in rows])

    def cut(s: str) -> str:
        s = " ".join(s.split())
        return s if width is None or len(s) <= width else s[:width - 1] + "…"

    return pd.DataFrame({
        "instruction": [cut(r["instruction"]) for r in rows],
        "input": [cut(r.get("input", "")) for r in rows],
        "reference": [cut(r["output"]) for r in rows],
        "response": [cut(r[key]) for r in rows],
        "rouge_l": [round(s, 3) for s in scores],
    })
