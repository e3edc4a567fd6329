"""GRPO (Shao et al., 2024): reinforcement learning from a verifiable reward, one small function per idea.

For each prompt the policy samples a *group* of G completions; a program scores each (1 right, 0 wrong).

* :func:`group_advantages` — a completion's advantage is its reward minus its group's mean reward (the group
  is the baseline: no value network), optionally divided by the group's standard deviation. The division makes
  every group's advantages the same size whatever its difficulty; Dr. GRPO (Liu et al., 2025) drops it because
  it weights nearly-solved and nearly-hopeless prompts up. A group whose rewards are all equal has advantage
  zero everywhere: it teaches nothing.
* :func:`clipped_surrogate` — PPO's clipped importance ratio ``min(r·A, clip(r, 1-ε, 1+ε')·A)`` per token, with
  ``r = π/π_old``. With one update per batch of samples (the default) ``r`` is 1 and its gradient is the
  plain policy gradient; the clip matters when a batch is reused for several updates.
* :func:`k3_kl` — the per-token estimator ``exp(ref - logp) - (ref - logp) - 1`` of KL(π‖π_ref) (Schulman's
  "k3": unbiased, always ≥ 0). The reference is the same network with its LoRA adapters off. Many recent
  recipes (DAPO, Dr. GRPO) set its weight β to 0: with a verifiable reward there is no reward model to
  exploit, and the KL term mostly slows learning.
* :func:`average_loss` — ``"sequence"`` (GRPO's paper, TRL's ``loss_type="grpo"``): each completion's mean over
  its tokens, then the mean over completions, so a long wrong answer weighs as much as a short one;
  ``"token"`` (DAPO, TRL's ``"bnpo"``): the mean over every token of the batch, so long completions weigh more.

:func:`grpo_loss` puts them together and equals TRL's ``GRPOTrainer._compute_loss`` (tests/test_grpo.py).
The trainer is :mod:`llm_companion.rl.trainer`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = ("sequence", "token")


def group_advantages(rewards: torch.Tensor, *, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Advantages (N, G) from rewards (N, G), one row per group: ``r - mean(r)``, divided by ``std(r) + eps``
    (the unbiased std, as TRL) when ``scale``."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (groups, group_size) with group_size >= 2, got {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (rewards.std(dim=1, keepdim=True) + eps)
    return centred


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from log-probs of sampled tokens: ``exp(Δ) - Δ - 1``, ``Δ = ref - logp``."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *,
                      eps_low: float = 0.2, eps_high: float | None = None) -> torch.Tensor:
    """Per-token loss ``-min(r·A, clip(r, 1-eps_low, 1+eps_high)·A)`` (B, T); ``advantages`` is (B,) or (B, T)."""
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - eps_low, 1 + (eps_low if eps_high is None else eps_high))
    return -torch.min(ratio * advantages, clipped * advantages)


def average_loss(per_token: torch.Tensor, mask: torch.Tensor, level: str = "sequence") -> torch.Tensor:
    """The batch loss from per-token losses (B, T) over the completion tokens ``mask`` (B, T)."""
    mask = mask.to(per_token.dtype)
    if level == "sequence":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if level == "token":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              ref_logp: torch.Tensor | None = None, beta: float = 0.0, eps_low: float = 0.2,
              eps_high: float | None = None, level: str = "sequence") -> torch.Tensor:
    """GRPO's loss on a batch of completions: clipped surrogate plus ``beta`` times the k3 KL, averaged by ``level``.

    ``logp``/``old_logp``/``ref_logp``: (B, T) log-probs of the sampled tokens under the policy (with gradient),
    the policy that sampled them, and the reference; ``advantages``: (B,); ``mask``: (B, T) completion tokens.
    """
    per_token = clipped_surrogate(logp, old_logp, advantages, eps_low=eps_low, eps_high=eps_high)
    if beta:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp, the reference model's log-probs")
        per_token = per_token + beta * k3_kl(logp, ref_logp)
    return average_loss(per_token, mask, level)


def pad_completions(prompt: Sequence[int], completions: Sequence[Sequence[int]], pad_id: int,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (G, P + C), mask (G, C))``: the prompt followed by each completion, right-padded to the longest.

    Right padding is safe without an attention mask: a causal model's logits at a real position never see the
    padding after it.
    """
    width = max(1, max(len(c) for c in completions))
    ids = torch.full((len(completions), len(prompt) + width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(completions), width, dtype=torch.bool)
    ids[:, :len(prompt)] = torch.tensor(list(prompt), dtype=torch.long)
    for i, c in enumerate(completions):
        ids[i, len(prompt):len(prompt) + len(c)] = torch.tensor(list(c), dtype=torch.long)
        mask[i, :len(c)] = True
    return ids, mask


def token_logprobs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probs (G, C) of the completion tokens ``ids[:, P:]`` (zero where ``mask`` is False).

    The vocabulary head runs only at the positions that predict a completion token (``logits_at``).
    """
    G, C = mask.shape
    P = ids.shape[1] - C
    at = torch.zeros_like(ids, dtype=torch.bool)
    at[:, P - 1:P - 1 + C] = mask               # position t predicts token t + 1
    logits = model(ids, logits_at=at).float()                                  # (N, V)
    targets = ids[:, P:][mask]                                                 # (N,)
    picked = -F.cross_entropy(logits, targets, reduction="none")               # log softmax at the targets
    out = torch.zeros(G, C, dtype=picked.dtype, device=picked.device)
    out[mask] = picked
    return out
