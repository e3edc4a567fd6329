"""Direct preference optimization (DPO, Rafailov et al., 2023) with LoRA and a cached reference (chapter 10).

Bradley–Terry: a person prefers answer ``y_w`` to ``y_l`` with probability ``σ(r(x, y_w) − r(x, y_l))``.
DPO writes the reward as a log-ratio of the policy being trained to a frozen reference,
``r(x, y) = β · (log π(y|x) − log π_ref(y|x))``, and maximizes the likelihood of the observed preferences:

    loss = −log σ(β · [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])

``log π(y|x)`` is the sum of the log-probabilities of the *response* tokens only. The reference never
changes, so its log-probabilities are computed once per pair and cached; no second copy of the model sits in
memory. Two references, one network with LoRA adapters:

- the base model: the same network with its adapters switched off (:func:`adapters_disabled`,
  :func:`reference_logprobs`);
- the model after instruction tuning (SFT then DPO, the order the field chains them): the adapters as SFT
  left them, scored once with :func:`pair_logprobs` before DPO trains the *same* adapters further
  (``train_dpo(..., reference=...)``). The final adapter then still applies to the untouched base model.
  :func:`adapter_state` and :func:`swapped_adapters` move between adapter states.

Data: the preference set of the reference book (``instruction-data-with-preference.json``: chapter 7's
records, each with a ``chosen`` (polite) and a ``rejected`` (impolite) answer), split 85/5/10 by
:func:`llm_companion.finetune.instruct.split_records` — the same rule, and on these records the same split, as
chapter 7.
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llm_companion.data.artifacts import fetch
from llm_companion.finetune.chat_sft import answer_ids, end_id, prompt_ids
from llm_companion.finetune.instruct import Split, split_records
from llm_companion.finetune.lora import _set_submodule, has_lora, lora_layers
from llm_companion.progress import progress
from llm_companion.training.loop import TrainConfig, train

PREFERENCE_ARTIFACT = "instruction-data-with-preference"


class PreferenceDataError(ValueError):
    """A preference record lacks a field, or a split is empty."""


# --------------------------------------------------------------------------------------------- data
def validate_preferences(records: Any) -> list[dict[str, str]]:
    """Check each record has string ``instruction``, ``chosen`` and ``rejected`` (``input`` optional).

    A bad record raises :class:`PreferenceDataError` naming its index (and instruction) and the field.
    """
    if not isinstance(records, list):
        raise PreferenceDataError(f"preference data must be a JSON list of records, got {type(records).__name__}")
    clean = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise PreferenceDataError(f"record {i}: expected an object, got {type(rec).__name__}")
        name = f"record {i}" + (f" ({rec['instruction'][:40]!r})" if isinstance(rec.get("instruction"), str) else "")
        for key in ("instruction", "chosen", "rejected"):
            if not isinstance(rec.get(key), str):
                what = "missing" if key not in rec else f"a {type(rec[key]).__name__}, not a string"
                raise PreferenceDataError(f"{name}: field {key!r} is {what}; every preference record needs "
                                          f"'instruction', 'chosen' and 'rejected'")
        inp = rec.get("input") or ""
        if not isinstance(inp, str):
            raise PreferenceDataError(f"{name}: field 'input' must be a string (or absent)")
        clean.append({**rec, "input": inp})
    return clean


def load_preference_data(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """Read and validate a preference data set (default: the book's ``instruction-data-with-preference``)."""
    if path is None:
        path = fetch(PREFERENCE_ARTIFACT)
    with open(path, encoding="utf-8") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise PreferenceDataError(f"{Path(path).name} is not valid JSON ({e})") from None
    return validate_preferences(records)


def split_preferences(records: Sequence[dict], *, limit: int | None = None):
    """``Split(train, val, test)``: chapter 7's fixed 85/5/10 rule; ``limit`` keeps the first N of each part.

    An empty part raises :class:`PreferenceDataError` (a ``limit`` or data set too small).
    """

    parts = split_records(records)
    if limit is not None:
        if limit < 1:
            raise PreferenceDataError(f"--limit must be a positive number of records, got {limit}")
        parts = Split(*(p[:limit] for p in parts))
    for name, part in zip(("train", "validation", "test"), parts):
        if not part:
            raise PreferenceDataError(f"the {name} split is empty ({len(records)} records in all); "
                                      f"use more data or a larger --limit")
    return parts


class PairExample(NamedTuple):
    """One tokenized preference pair: the shared prompt and the two answers (each ending in the end token)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def encode_pairs(records: Sequence[dict], tokenizer, *, max_response: int | None = None) -> list[PairExample]:
    """Tokenize each record's prompt (the model's own template) and its chosen and rejected answers.

    ``max_response`` cuts answers to that many tokens (the end token included) to bound the cost.
    """
    stop = end_id(tokenizer)
    out = []
    for rec in records:
        p = prompt_ids(tokenizer, rec)
        c, r = answer_ids(tokenizer, rec["chosen"]) + [stop], answer_ids(tokenizer, rec["rejected"]) + [stop]
        if max_response is not None:
            c, r = c[:max_response], r[:max_response]
        out.append(PairExample(p, c, r))
    return out


def collate_responses(pairs: Sequence[tuple[list[int], list[int]]], *, pad_id: int = 0,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` for (prompt, response) pairs: ``ids`` (B, T) right-padded; ``mask`` (B, T − 1) marks
    the positions whose *next* token is a response token (the targets that count)."""
    width = max(len(p) + len(r) for p, r in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(pairs), width - 1, dtype=torch.bool)
    for i, (p, r) in enumerate(pairs):
        seq = list(p) + list(r)
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, len(p) - 1:len(seq) - 1] = True                # target t+1 is a response token
    return ids, mask


def collate_pairs(batch: Sequence[PairExample], *, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All chosen answers then all rejected ones in one batch (B pairs → 2B rows), so one forward pass scores
    both; rows ``:B`` are chosen, ``B:`` rejected."""
    return collate_responses([(e.prompt, e.chosen) for e in batch] + [(e.prompt, e.rejected) for e in batch],
                             pad_id=pad_id)


# --------------------------------------------------------------------------------------------- log-probs
def response_logprobs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log π(y|x)`` per row (B,): the sum over response tokens of ``log softmax(logits)[next token]``.

    Only the response positions go through the output head (``logits_at``): in the book's preference data
    about four positions in five are prompt, and the head (a 49,152-word softmax for SmolLM2) is the widest
    layer, so this skips most of its work, forward and backward, without changing any number.
    """
    logits = model(ids[:, :-1], logits_at=mask).float()                 # (N, V): response positions only
    targets = ids[:, 1:][mask]                                           # (N,)
    token_logp = logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)  # (N,)
    rows = mask.nonzero()[:, 0]                                          # which sequence each belongs to
    return token_logp.new_zeros(ids.shape[0]).index_add(0, rows, token_logp)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model computes its base function: every LoRA layer is swapped for its base layer.

    The reference of DPO without a second copy of the weights; the adapters come back on exit.
    """

    layers = lora_layers(model)
    for name, layer in layers.items():
        _set_submodule(model, name, layer.base)
    try:
        yield model
    finally:
        for name, layer in layers.items():
            _set_submodule(model, name, layer)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's LoRA matrices (``lora_A``/``lora_B`` of every adapted layer), to restore later."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" in k}
    if not state:
        raise ValueError("the model has no LoRA adapters; call apply_lora(model, ...) first")
    return state


@contextlib.contextmanager
def swapped_adapters(model: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Inside the block the adapters hold ``state`` (from :func:`adapter_state`); on exit, what they held.

    E.g. the SFT model (the reference of chained DPO) scored again after DPO moved the adapters.
    """
    current = adapter_state(model)
    model.load_state_dict(state, strict=False)
    try:
        yield model
    finally:
        model.load_state_dict(current, strict=False)


@torch.no_grad()
def pair_logprobs(model: nn.Module, pairs: Sequence[PairExample], *, batch_size: int = 8, pad_id: int = 0,
                  desc: str = "log-probs") -> torch.Tensor:
    """``(N, 2)``: log-probs of the chosen (column 0) and rejected (column 1) answer of every pair.

    Pairs are batched in order of length, so a batch pads little; the rows come back in the given order.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt) + max(map(len, pairs[i][1:])))
    out = torch.empty(len(pairs), 2)
    starts = range(0, len(pairs), batch_size)
    for s in progress(starts, desc=desc, unit="batch", disable=len(starts) < 2):
        rows = order[s:s + batch_size]
        ids, mask = collate_pairs([pairs[i] for i in rows], pad_id=pad_id)
        lp = response_logprobs(model, ids.to(device), mask.to(device)).float().cpu()
        out[rows] = torch.stack([lp[:len(rows)], lp[len(rows):]], 1)
    model.train(was_training)
    return out


def reference_logprobs(model: nn.Module, pairs: Sequence[PairExample], **kwargs) -> torch.Tensor:
    """:func:`pair_logprobs` of the reference (the model with adapters off): computed once, then cached."""
    with adapters_disabled(model):
        return pair_logprobs(model, pairs, desc="reference log-probs", **kwargs)


# --------------------------------------------------------------------------------------------- the loss
def check_beta(beta) -> float:
    """β as a float; β ≤ 0 (or not a finite number) raises a one-line ValueError."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a positive number (typically 0.05-0.5), got {beta!r}")
    return float(beta)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(losses, chosen_rewards, rejected_rewards)``, each (B,), from response log-probs (B,).

    ``reward = β · (log π − log π_ref)``; ``loss = −log σ(reward_chosen − reward_rejected)``.
    """
    beta = check_beta(beta)
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def preference_metrics(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> dict[str, Any]:
    """Loss, preference accuracy (chosen reward > rejected) and reward margin, from (N, 2) log-probs.

    Also the per-pair margins (``margins``) and correctness (``correct``) for intervals.
    """
    losses, rc, rr = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta)
    margins = rc - rr
    correct = (margins > 0).float()
    return {"loss": float(losses.mean()), "accuracy": float(correct.mean()), "margin": float(margins.mean()),
            "margins": margins, "correct": correct}


# --------------------------------------------------------------------------------------------- training
class DPORun(NamedTuple):
    """What :func:`train_dpo` measured: per step ``loss``, ``accuracy`` and ``margin`` (batch means), and
    the :class:`~llm_companion.training.loop.History` of the run."""

    loss: list[float]
    accuracy: list[float]
    margin: list[float]
    history: Any


def train_dpo(model: nn.Module, pairs: Sequence[PairExample], *, beta: float = 0.1, steps: int = 20,
              lr: float = 5e-4, batch_size: int = 4, reference: torch.Tensor | None = None, pad_id: int = 0,
              seed: int = 123) -> DPORun:
    """Train ``model``'s LoRA adapters with the DPO loss on ``pairs`` for ``steps`` optimizer steps.

    ``reference`` is the (N, 2) log-probs of the reference model on ``pairs``: :func:`pair_logprobs` of the
    SFT model to chain DPO after SFT (the adapters then start where SFT left them, so the first loss is
    log 2); when not given, :func:`reference_logprobs` (the base model, adapters off) computed here. The
    loop is the library's :func:`~llm_companion.training.loop.train` with the DPO loss as its ``loss_fn``.
    """
    from torch.utils.data import DataLoader

    beta = check_beta(beta)
    if not pairs:
        raise PreferenceDataError("no preference pairs to train on; use more data or a larger --limit")
    if not has_lora(model):
        raise ValueError("train_dpo trains LoRA adapters; call apply_lora(model, ...) first")
    if reference is None:
        reference = reference_logprobs(model, pairs, pad_id=pad_id)
    if reference.shape != (len(pairs), 2):
        raise ValueError(f"reference has shape {tuple(reference.shape)}, expected ({len(pairs)}, 2)")

    def collate(items):
        ids, mask = collate_pairs([p for p, _ in items], pad_id=pad_id)
        return ids, mask, torch.stack([r for _, r in items])              # (2B, T), (2B, T-1), (B, 2)

    data = list(zip(pairs, reference))
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=gen,
                        drop_last=len(data) >= batch_size)
    run = DPORun([], [], [], None)

    def loss_fn(net, batch):
        ids, mask, ref = batch
        lp = response_logprobs(net, ids, mask)
        b = ref.shape[0]
        losses, rc, rr = dpo_loss(lp[:b], lp[b:], ref[:, 0], ref[:, 1], beta)
        if torch.is_grad_enabled():          # a training step (not an evaluation pass)
            run.loss.append(float(losses.detach().mean()))
            run.accuracy.append(float((rc > rr).float().mean()))
            run.margin.append(float((rc - rr).mean()))
        return losses.mean()

    cfg = TrainConfig(epochs=-(-steps // len(loader)), max_steps=steps, lr=lr, weight_decay=0.0, eval_every=None,
                      sample_every=None, log_every=max(1, steps // 5), seed=seed)
    model.train()
    history = train(model, loader, None, cfg, loss_fn=loss_fn)
    model.eval()
    return run._replace(history=history)


@torch.no_grad()
def answer_logprobs(model: nn.Module, tokenizer, records: Sequence[dict], answers: Sequence[str], *,
                    batch_size: int = 8) -> torch.Tensor:
    """``log π(y|x)`` of each answer (ended by the end token) to its record's prompt, under ``model``, (N,)."""
    stop = end_id(tokenizer)
    seqs = [(prompt_ids(tokenizer, r), answer_ids(tokenizer, a) + [stop]) for r, a in zip(records, answers)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, len(seqs), batch_size):
        ids, mask = collate_responses(seqs[s:s + batch_size])
        out.append(response_logprobs(model, ids.to(device), mask.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def implicit_rewards(model: nn.Module, tokenizer, records: Sequence[dict], answers: Sequence[str], *,
                     beta: float, reference: torch.Tensor | None = None, batch_size: int = 8) -> torch.Tensor:
    """``β · (log π(y|x) − log π_ref(y|x))`` of each answer to its record's prompt, (N,).

    The reward DPO's policy implicitly assigns: a score of *any* answer, e.g. generated ones. ``reference``
    is the reference's :func:`answer_logprobs` of the same answers (e.g. the SFT model's, through
    :func:`swapped_adapters`); when not given, the base model's (adapters off).
    """
    beta = check_beta(beta)
    policy = answer_logprobs(model, tokenizer, records, answers, batch_size=batch_size)
    if reference is None:
        with adapters_disabled(model):
            reference = answer_logprobs(model, tokenizer, records, answers, batch_size=batch_size)
    if reference.shape != policy.shape:
        raise ValueError(f"reference has shape {tuple(reference.shape)}, expected {tuple(policy.shape)}")
    return beta * (policy - reference)
