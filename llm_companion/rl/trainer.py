"""The GRPO trainer: sample groups, score them with a verifier, and update a LoRA adapter (``train_grpo``).

One step: take the next ``prompts_per_step`` training prompts (a fixed, seeded order), sample ``group_size``
completions of each from one shared prefill (:func:`~llm_companion.rl.sampling.sample_groups`), score them,
turn the rewards into group-relative advantages, and take ``updates_per_batch`` optimizer steps on
:func:`~llm_companion.rl.grpo.grpo_loss`. The policy is the model with its LoRA adapters; the reference is the
same network with the adapters off (:func:`~llm_companion.finetune.dpo.adapters_disabled`), so no second copy
of the weights sits in memory.

The loss is accumulated group by group (one backward each, so memory holds one group's activations), with
each group's sum divided by the whole step's count of completions (``"sequence"``) or tokens (``"token"``):
the gradient is that of the batch loss of :func:`~llm_companion.rl.grpo.grpo_loss`. A group whose rewards are
all equal has zero advantages; with ``beta = 0`` its gradient is exactly zero, so it is skipped.

**Resuming.** With ``checkpoint_dir``, every ``checkpoint_every`` steps the trainable tensors, the optimizer,
the sampling generator, the step and the history are written there atomically; a run started with the same
folder continues from it. The prompt order is a function of the seed and the step, so a resumed run sees the
prompts and draws the samples the uninterrupted one would have.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llm_companion.atomic import atomic_dir, write_json
from llm_companion.finetune.dpo import adapters_disabled
from llm_companion.finetune.lora import has_lora
from llm_companion.models.checkpoint import generator_state, set_generator_state
from llm_companion.progress import progress
from llm_companion.rl.grpo import LEVELS, clipped_surrogate, group_advantages, k3_kl, pad_completions, token_logprobs
from llm_companion.rl.sampling import sample_groups

STATE, WEIGHTS, OPTIMIZER = "state.json", "trainable.safetensors", "optimizer.pt"


@dataclass
class GRPOConfig:
    """Settings of :func:`train_grpo`."""

    steps: int = 40
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 48
    temperature: float = 1.0
    lr: float = 2e-4
    beta: float = 0.0               # weight of the KL term to the reference (0: off, as DAPO and Dr. GRPO)
    eps_low: float = 0.2            # clip range of the importance ratio
    eps_high: float | None = None   # None: the same as eps_low
    scale_rewards: bool = True      # divide advantages by the group's std
    level: str = "sequence"         # loss averaging: "sequence" (GRPO) or "token" (DAPO)
    updates_per_batch: int = 1      # optimizer steps per batch of samples (μ); > 1 makes the clip matter
    max_grad_norm: float = 1.0
    track_kl: bool = True           # log the KL to the reference even when beta = 0 (one more forward)
    seed: int = 0
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "max_new_tokens", "updates_per_batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (advantages compare a group's members), "
                             f"got {self.group_size}")
        if not self.lr > 0 or not self.temperature > 0 or self.beta < 0:
            raise ValueError("lr and temperature must be > 0, and beta >= 0")
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")


@dataclass
class GRPOHistory:
    """One entry per step: mean reward, completion length, share of groups with all-equal rewards, KL, ..."""

    steps: list[dict] = field(default_factory=list)

    def column(self, key: str) -> list:
        return [s.get(key) for s in self.steps]


@dataclass
class _Group:
    prompt: list[int]
    completions: list[list[int]]
    rewards: torch.Tensor          # (G,)
    advantages: torch.Tensor       # (G,)


def _prompt_order(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen).tolist()


def _sample_groups(model, prompts, reward, indices, cfg: GRPOConfig, eos_id, gen) -> list[_Group]:
    samples = sample_groups(model, [prompts[i] for i in indices], cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                            temperature=cfg.temperature, eos_id=eos_id, generator=gen)
    groups = []
    for i, comps in zip(indices, samples):
        rewards = torch.tensor([reward(i, c) for c in comps], dtype=torch.float32)
        adv = group_advantages(rewards[None], scale=cfg.scale_rewards)[0]
        groups.append(_Group(list(prompts[i]), comps, rewards, adv))
    return groups


def _group_loss(model, g: _Group, cfg: GRPOConfig, pad_id: int, denom: float, old: torch.Tensor | None,
                ref: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This group's share of the step's loss (already divided by ``denom``), its mask and its log-probs."""
    ids, mask = pad_completions(g.prompt, g.completions, pad_id)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    logp = token_logprobs(model, ids, mask)                                   # (G, C)
    old = logp.detach() if old is None else old
    per_token = clipped_surrogate(logp, old, g.advantages.to(device), eps_low=cfg.eps_low, eps_high=cfg.eps_high)
    if cfg.beta:
        per_token = per_token + cfg.beta * k3_kl(logp, ref)
    m = mask.to(per_token.dtype)
    if cfg.level == "sequence":   # each completion's token mean; the step's mean over completions via denom
        total = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).sum()
    else:
        total = (per_token * m).sum()
    return total / denom, mask, logp.detach()


@torch.no_grad()
def _reference_logprobs(model, g: _Group, pad_id: int) -> torch.Tensor:
    ids, mask = pad_completions(g.prompt, g.completions, pad_id)
    device = next(model.parameters()).device
    with adapters_disabled(model):
        return token_logprobs(model, ids.to(device), mask.to(device))


def _update(model, optimizer, groups: list[_Group], cfg: GRPOConfig, pad_id: int) -> dict:
    """The optimizer step(s) on one batch of groups; returns the step's loss and KL (None when not computed)."""
    active = [g for g in groups if cfg.beta or bool(g.advantages.abs().sum() > 0)]
    n_tokens = sum(len(c) for g in groups for c in g.completions)
    denom = float(len(groups) * cfg.group_size) if cfg.level == "sequence" else float(max(1, n_tokens))
    refs = [_reference_logprobs(model, g, pad_id) if (cfg.beta or cfg.track_kl) else None for g in active]
    olds: list[torch.Tensor] = []
    loss_sum, kl_sum, kl_tokens = 0.0, 0.0, 0
    for u in range(cfg.updates_per_batch if active else 0):
        optimizer.zero_grad(set_to_none=True)
        for j, g in enumerate(active):
            loss, mask, logp = _group_loss(model, g, cfg, pad_id, denom, olds[j] if u else None, refs[j])
            loss.backward()
            if u == 0:
                olds.append(logp)
                loss_sum += float(loss.detach())
                if refs[j] is not None:
                    kl_sum += float(k3_kl(logp, refs[j])[mask].sum())
                    kl_tokens += int(mask.sum())
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        optimizer.step()
    return {"loss": loss_sum, "kl": kl_sum / kl_tokens if kl_tokens else None}


def _step_record(step: int, groups: list[_Group], eos_id: int | None, seconds: float) -> dict:
    rewards = torch.stack([g.rewards for g in groups])                           # (N, G)
    comps = [c for g in groups for c in g.completions]
    return {"step": step, "reward": float(rewards.mean()),
            "length": sum(len(c) for c in comps) / len(comps),
            "all_equal": float((rewards.max(1).values == rewards.min(1).values).float().mean()),
            "truncated": sum(eos_id is not None and (not c or c[-1] != eos_id) for c in comps) / len(comps),
            "seconds": seconds}


def save_grpo_checkpoint(directory: str | Path, model: nn.Module, optimizer, generator: torch.Generator,
                         step: int, history: GRPOHistory, cfg: GRPOConfig, elapsed: float) -> Path:
    """Write what a resumed run needs (trainable tensors, optimizer, sampling generator, step, history), atomically."""
    with atomic_dir(directory) as tmp:
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                  str(tmp / WEIGHTS))
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        write_json(tmp / STATE, {"step": step, "elapsed": elapsed, "history": history.steps,
                                 "generator": generator_state(generator), "config": asdict(cfg)})
    return Path(directory)


def load_grpo_checkpoint(directory: str | Path, model: nn.Module, optimizer, generator: torch.Generator,
                         cfg: GRPOConfig) -> tuple[int, GRPOHistory, float]:
    """Restore a checkpoint of :func:`save_grpo_checkpoint`; returns ``(step, history, elapsed)``."""
    directory = Path(directory)
    state = json.loads((directory / STATE).read_text())
    saved = {k: v for k, v in state["config"].items() if k != "steps"}
    mine = {k: v for k, v in asdict(cfg).items() if k != "steps"}
    if saved != mine:
        diff = sorted(k for k in mine if saved.get(k) != mine[k])
        raise ValueError(f"checkpoint in {directory} was written with other settings ({', '.join(diff)}); "
                         f"use the same settings or another checkpoint folder")
    tensors = load_file(str(directory / WEIGHTS))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER, weights_only=True))
    set_generator_state(generator, state["generator"])
    return state["step"], GRPOHistory(state["history"]), state["elapsed"]


def train_grpo(model: nn.Module, prompts: Sequence[Sequence[int]], reward: Callable[[int, list[int]], float],
               cfg: GRPOConfig | None = None, *, eos_id: int | None, pad_id: int = 0,
               checkpoint_dir: str | Path | None = None, evaluate: Callable[[nn.Module], float] | None = None,
               eval_every: int = 0, desc: str = "GRPO") -> GRPOHistory:
    """Train ``model``'s LoRA adapters with GRPO on ``prompts`` (token ids), scored by ``reward(i, completion)``.

    ``evaluate(model)`` (e.g. validation accuracy) is logged every ``eval_every`` steps and after the last.
    Returns the per-step history; a run resumed from ``checkpoint_dir`` returns the whole run's.
    """
    cfg = cfg or GRPOConfig()
    if not has_lora(model):
        raise ValueError("train_grpo trains LoRA adapters: call apply_lora(model, ...) first (the reference is the "
                         "model with its adapters off)")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.seed)
    step, history, elapsed = 0, GRPOHistory(), 0.0
    if checkpoint_dir is not None and (Path(checkpoint_dir) / STATE).exists():
        step, history, elapsed = load_grpo_checkpoint(checkpoint_dir, model, optimizer, gen, cfg)
    order = _prompt_order(len(prompts), cfg.seed)
    bar = progress(total=cfg.steps, initial=step, desc=desc, unit="step")
    while step < cfg.steps:
        t0 = time.perf_counter()
        start = step * cfg.prompts_per_step
        indices = [order[(start + j) % len(order)] for j in range(cfg.prompts_per_step)]
        groups = _sample_groups(model, prompts, reward, indices, cfg, eos_id, gen)
        model.train()
        record = _update(model, optimizer, groups, cfg, pad_id)
        model.eval()
        step += 1
        record |= _step_record(step, groups, eos_id, time.perf_counter() - t0)
        if evaluate is not None and eval_every and (step % eval_every == 0 or step == cfg.steps):
            record["val_accuracy"] = float(evaluate(model))
        elapsed += time.perf_counter() - t0
        history.steps.append(record)
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.2f}", length=f"{record['length']:.0f}")
        if checkpoint_dir is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            save_grpo_checkpoint(checkpoint_dir, model, optimizer, gen, step, history, cfg, elapsed)
    bar.close()
    return history
