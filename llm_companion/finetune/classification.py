"""Classification fine-tuning: turn a pretrained GPT into a text classifier (chapter 6, SMS spam).

The recipe: swap the vocabulary-sized output head for a ``Linear(emb_dim, num_classes)``, freeze most of
the network, and read the class logits at one position of the sequence. Because attention is causal, only
the *last real token* of a message has attended to all of it, so that is the position :class:`GPTClassifier`
reads by default (``pooling="last_real"``). The reference book reads the last position of the padded
sequence instead (``pooling="last"``), which for short messages is a padding token; both are available so
the chapter can compare them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llm_companion.data.download import models_dir, project_home
from llm_companion.data.tokenizer import encode_text, gpt2_tokenizer
from llm_companion.models.checkpoint import check_compatible, save_model, verify_dir
from llm_companion.models.config import GPTConfig
from llm_companion.models.eval_mode import evaluating
from llm_companion.models.gpt import GPTModel
from llm_companion.training.loop import train
from llm_companion.training.losses import evaluate

PAD_TOKEN_ID = 50256          # GPT-2's <|endoftext|>, used for padding as in the reference book
POOLINGS = ("last_real", "last", "first")
CLASSIFIER_DIRNAME = "spam-classifier"
_FORMAT = "llm_companion.classifier/1"


class ClassifierNotFound(FileNotFoundError):
    """No saved classifier where one was expected."""

    def __str__(self) -> str:
        return self.args[0]


class EmptyInputError(ValueError):
    """A text with nothing to classify."""


# --------------------------------------------------------------------------------------------- data
def encode_texts(texts: Iterable[str], tokenizer, max_length: int | None = None,
                 pad_token_id: int = PAD_TOKEN_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize, truncate to ``max_length`` (keeping the start) and right-pad with ``pad_token_id``.

    Returns ``(input_ids (N, L), lengths (N,))`` where ``L`` is ``max_length`` or, when None, the longest
    text. Text that looks like a special token is encoded as ordinary text, so a message can never contain
    the padding id.
    """
    return pad_sequences(_encode_all(texts, tokenizer), max_length, pad_token_id)


def pad_sequences(encoded: Sequence[Sequence[int]], max_length: int | None = None,
                  pad_token_id: int = PAD_TOKEN_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncate token-id lists to ``max_length`` (default: the longest) and right-pad them; see :func:`encode_texts`."""
    length = max(len(ids) for ids in encoded) if max_length is None else int(max_length)
    if length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length!r}")
    input_ids = torch.full((len(encoded), length), pad_token_id, dtype=torch.long)
    lengths = torch.empty(len(encoded), dtype=torch.long)
    for i, ids in enumerate(encoded):
        ids = ids[:length]
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        lengths[i] = len(ids)
    return input_ids, lengths


def _encode_all(texts: Iterable[str], tokenizer) -> list[list[int]]:
    encoded = []
    for i, text in enumerate(texts):
        ids = encode_text(tokenizer, text)  # "<|endoftext|>" typed in a message is text, never the pad id
        if not ids:
            raise EmptyInputError(f"text {i} encodes to no tokens; remove empty messages before encoding")
        encoded.append(ids)
    return encoded


class ClassificationDataset(Dataset):
    """Texts as right-padded token ids of one common length, with integer class labels.

    ``max_length`` defaults to the longest text, capped at ``context_length`` when given; longer texts are
    truncated to their first ``max_length`` tokens. Items are ``(input_ids (L,), label ())``.
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[int], tokenizer, max_length: int | None = None,
                 *, pad_token_id: int = PAD_TOKEN_ID, context_length: int | None = None):
        texts, labels = list(texts), [int(y) for y in labels]
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        encoded = _encode_all(texts, tokenizer)
        if max_length is None:
            longest = max(len(ids) for ids in encoded)
            max_length = longest if context_length is None else min(longest, context_length)
        elif context_length is not None and max_length > context_length:
            raise ValueError(f"max_length {max_length} exceeds the model's context_length {context_length}; "
                             f"use max_length <= {context_length}")
        self.max_length = int(max_length)
        self.pad_token_id = pad_token_id
        self.input_ids, self.lengths = pad_sequences(encoded, self.max_length, pad_token_id)
        self.labels = torch.tensor(labels, dtype=torch.long)

    @classmethod
    def from_frame(cls, df, tokenizer, max_length: int | None = None, **kwargs) -> ClassificationDataset:
        """From a DataFrame with columns ``Text`` and ``Label`` (as in the spam CSVs)."""
        return cls(df["Text"].tolist(), df["Label"].tolist(), tokenizer, max_length, **kwargs)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids[i], self.labels[i]


def create_classification_loaders(splits: dict, tokenizer, *, batch_size: int = 8,
                                  max_length: int | None = None, context_length: int | None = None,
                                  seed: int = 123, num_workers: int = 0,
                                  ) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train/validation/test loaders from ``{"train": df, "validation": df, "test": df}``.

    The validation and test sets are padded to the training set's ``max_length`` (so every split looks
    the same to the model); the training loader shuffles with ``seed`` and drops a last partial batch.
    """
    train = ClassificationDataset.from_frame(splits["train"], tokenizer, max_length, context_length=context_length)
    val = ClassificationDataset.from_frame(splits["validation"], tokenizer, train.max_length)
    test = ClassificationDataset.from_frame(splits["test"], tokenizer, train.max_length)
    gen = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen,
                       num_workers=num_workers),
            DataLoader(val, batch_size=batch_size, num_workers=num_workers),
            DataLoader(test, batch_size=batch_size, num_workers=num_workers))


# --------------------------------------------------------------------------------------------- model
class GPTClassifier(nn.Module):
    """A GPT whose output head is replaced by ``Linear(emb_dim, num_classes)``; ``forward`` gives (B, classes).

    ``pooling`` picks the position whose logits classify the sequence:

    - ``"last_real"`` (default): the last non-padding token, the only one that has attended to the whole
      message. Positions after it cannot influence it (causal attention), so the all-padding tail of a batch
      is cut off before the forward pass: same logits, less compute.
    - ``"last"``: the last position of the padded sequence, as in the reference book.
    - ``"first"``: the first token, which has seen nothing but itself (a deliberately poor choice).

    The base model is modified in place: ``self.gpt.out_head`` is the new head. Right padding with
    ``pad_token_id`` is assumed (see :func:`encode_texts`).
    """

    def __init__(self, gpt: GPTModel, num_classes: int = 2, *, labels: Sequence[str] | None = None,
                 pad_token_id: int = PAD_TOKEN_ID, pooling: str = "last_real", max_length: int | None = None,
                 seed: int = 123):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        labels = tuple(labels) if labels is not None else tuple(str(i) for i in range(num_classes))
        if len(labels) != num_classes:
            raise ValueError(f"{len(labels)} labels for {num_classes} classes")
        self.gpt = gpt
        self.labels = labels
        self.pad_token_id = pad_token_id
        self.pooling = pooling
        self.max_length = max_length
        ref = gpt.tok_emb.weight
        with torch.random.fork_rng(devices=[]):  # a seeded head that leaves the global RNG untouched
            torch.manual_seed(seed)
            head = nn.Linear(gpt.cfg.emb_dim, num_classes)
        gpt.out_head = head.to(device=ref.device, dtype=ref.dtype)  # unties it from tok_emb, if it was tied

    @property
    def num_classes(self) -> int:
        return self.gpt.out_head.out_features

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.pooling == "last":
            return self.gpt(input_ids)[:, -1, :]                              # (B, classes)
        if self.pooling == "first":
            return self.gpt(input_ids[:, :1])[:, 0, :]                        # (B, classes)
        lengths = (input_ids != self.pad_token_id).sum(dim=1).clamp(min=1)   # (B,) right padding
        logits = self.gpt(input_ids[:, :int(lengths.max())])                  # (B, T', classes)
        return logits[torch.arange(len(input_ids), device=logits.device), lengths - 1]


class ParameterCount(NamedTuple):
    trainable: int
    frozen: int


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and frozen parameter counts (shared tensors counted once)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return ParameterCount(trainable, frozen)


def set_trainable(model: GPTClassifier | GPTModel, trainable_blocks: int | str = 1) -> ParameterCount:
    """Freeze everything except the last ``trainable_blocks`` transformer blocks, the final norm and the head.

    ``0`` trains only the final norm and the head; ``"all-blocks"`` every transformer block (embeddings stay
    frozen); ``"all"`` every parameter. Returns the resulting :class:`ParameterCount`.
    """
    gpt = model.gpt if isinstance(model, GPTClassifier) else model
    n_layers = len(gpt.blocks)
    if trainable_blocks == "all":
        for p in gpt.parameters():
            p.requires_grad_(True)
        return count_parameters(gpt)
    if trainable_blocks == "all-blocks":
        trainable_blocks = n_layers
    if isinstance(trainable_blocks, bool) or not isinstance(trainable_blocks, int) \
            or not 0 <= trainable_blocks <= n_layers:
        raise ValueError(f"trainable_blocks must be 'all', 'all-blocks' or an integer from 0 to {n_layers}, "
                         f"got {trainable_blocks!r}")
    for p in gpt.parameters():
        p.requires_grad_(False)
    trainable = [gpt.final_norm, gpt.out_head, *list(gpt.blocks)[n_layers - trainable_blocks:]]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    return count_parameters(gpt)


# --------------------------------------------------------------------------------------------- metrics
def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def classification_loss(model: nn.Module, batch, device: torch.device | str | None = None) -> torch.Tensor:
    """Cross-entropy of the class logits on one ``(input_ids, labels)`` batch (the loop's ``loss_fn``)."""
    input_ids, labels = batch
    device = device if device is not None else _device_of(model)
    logits = model(input_ids.to(device))                                     # (B, classes)
    return F.cross_entropy(logits.float(), labels.to(device))


@torch.no_grad()
def predict_loader(loader, model: nn.Module, num_batches: int | None = None,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels over the first ``num_batches`` batches (all when None), on the CPU."""
    device = device if device is not None else _device_of(model)
    preds, trues = [], []
    with evaluating(model):
        for i, (input_ids, labels) in enumerate(loader):
            if num_batches is not None and i >= num_batches:
                break
            preds.append(model(input_ids.to(device)).argmax(dim=-1).cpu())
            trues.append(labels.cpu())
    if not preds:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(preds), torch.cat(trues)


def calc_accuracy_loader(loader, model: nn.Module, num_batches: int | None = None,
                         device: torch.device | str | None = None) -> float:
    """Fraction of correctly classified examples (``nan`` for an empty loader)."""
    preds, labels = predict_loader(loader, model, num_batches, device)
    return float((preds == labels).float().mean()) if len(labels) else float("nan")


def calc_classification_loss_loader(loader, model: nn.Module, num_batches: int | None = None,
                                    device: torch.device | str | None = None) -> float:
    """Mean :func:`classification_loss` per batch (``nan`` for an empty loader), via the loop's ``evaluate``."""
    return evaluate(model, loader, classification_loss, num_batches, device=device)


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Counts ``cm[true, predicted]`` (rows: true class, columns: predicted class)."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def train_classifier(model: nn.Module, train_loader, val_loader, cfg, *, accuracy_batches: int | None = None,
                     **kwargs):
    """Fine-tune with the book's one loop (:func:`llm_companion.training.loop.train`).

    Adds the classification loss and, at each evaluation, ``train_accuracy``/``val_accuracy`` over the first
    ``accuracy_batches`` batches (default ``cfg.eval_batches``) to ``History.metrics``. Other keyword
    arguments go to ``train``. Returns the :class:`~llm_companion.training.loop.History`.
    """
    n = cfg.eval_batches if accuracy_batches is None else accuracy_batches

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return {"train_accuracy": calc_accuracy_loader(train_loader, m, n),
                "val_accuracy": calc_accuracy_loader(val_loader, m, n)}

    return train(model, train_loader, val_loader, cfg, loss_fn=classification_loss, eval_fn=eval_fn, **kwargs)


# --------------------------------------------------------------------------------------------- save / load
def classifier_dir() -> Path:
    """The default folder of the chapter's classifier: ``models/spam-classifier``."""
    return models_dir() / CLASSIFIER_DIRNAME


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(project_home()))
    except ValueError:
        return str(path)


def save_classifier(model: GPTClassifier, directory: str | os.PathLike | None = None, *,
                    base_weights: str | dict | None = None, metrics: dict | None = None) -> Path:
    """Save to ``directory`` (default ``models/spam-classifier``): ``model.safetensors``, ``config.json``
    (GPT config, labels, max length, pooling, base weights, metrics) and ``SHA256SUMS``, as one atomic step."""
    config = {
        "format": _FORMAT,
        "gpt_config": model.gpt.cfg.to_dict(),
        "num_classes": model.num_classes,
        "labels": list(model.labels),
        "max_length": model.max_length,
        "pad_token_id": model.pad_token_id,
        "pooling": model.pooling,
        "tokenizer": "gpt2",
        "base_weights": base_weights,
        "metrics": metrics or {},
    }
    return save_model(model, classifier_dir() if directory is None else directory, extra={"config.json": config})


def read_classifier_config(directory: str | os.PathLike | None = None) -> dict:
    """The ``config.json`` of a saved classifier; :class:`ClassifierNotFound` says how to make one."""
    d = Path(directory) if directory is not None else classifier_dir()
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise ClassifierNotFound(
            f"no saved classifier in {_display(d)}: run chapters/06_classification_finetuning.ipynb "
            f"(it trains one and saves it there) or point to a folder written by save_classifier()")
    config = json.loads((d / "config.json").read_text())
    if config.get("format") != _FORMAT:
        raise ClassifierNotFound(f"{_display(d / 'config.json')} is not a classifier config "
                                 f"(format {config.get('format')!r}); save it with save_classifier()")
    return config


def load_classifier(directory: str | os.PathLike | None = None, *,
                    device: torch.device | str | None = None) -> GPTClassifier:
    """Load a classifier written by :func:`save_classifier` (hashes verified, safetensors only), in eval mode."""
    d = Path(directory) if directory is not None else classifier_dir()
    config = read_classifier_config(d)
    verify_dir(d)
    model = GPTClassifier(GPTModel(GPTConfig.from_dict(config["gpt_config"])), config["num_classes"],
                          labels=config["labels"], pad_token_id=config["pad_token_id"],
                          pooling=config["pooling"], max_length=config["max_length"])
    tensors = load_file(d / "model.safetensors")
    check_compatible(model, tensors, d / "model.safetensors")
    model.load_state_dict(tensors)
    model.base_weights = config.get("base_weights")
    return model.to(device or "cpu").eval()


# --------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def classify(text: str, model: GPTClassifier | None = None, *, model_dir: str | os.PathLike | None = None,
             tokenizer=None) -> tuple[str, float]:
    """Classify one text: ``(label, probability of that label)``.

    Without ``model``, loads the saved classifier from ``model_dir`` (default ``models/spam-classifier``).
    The text is truncated and padded exactly as the training data was.
    """
    if not isinstance(text, str) or not text.strip():
        raise EmptyInputError("nothing to classify: give a non-empty message")
    if model is None:
        model = load_classifier(model_dir)
    if tokenizer is None:
        tokenizer = gpt2_tokenizer()
    max_length = model.max_length or model.gpt.cfg.context_length
    input_ids, _ = encode_texts([text], tokenizer, min(max_length, model.gpt.cfg.context_length), model.pad_token_id)
    with evaluating(model):
        probs = torch.softmax(model(input_ids.to(_device_of(model))).float(), dim=-1)[0]   # (classes,)
    k = int(probs.argmax())
    return model.labels[k], float(probs[k])

