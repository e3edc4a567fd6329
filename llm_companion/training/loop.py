"""One training loop for pretraining (chapter 4) and fine-tuning (chapters 6 and 7).

``train(model, train_loader, val_loader, cfg)`` runs AdamW with optional warmup + cosine decay, gradient
clipping and accumulation, optional bf16 autocast, periodic evaluation, text samples and checkpoints, and
returns a :class:`History`. What is being learned is pluggable:

* ``loss_fn(model, batch) -> scalar tensor`` — default: next-token cross-entropy on ``(input, target)``
  batches, targets ``-100`` ignored. A classifier passes e.g.
  ``lambda m, b: F.cross_entropy(m(b[0])[:, -1], b[1])``. The batch arrives already on the device.
* ``eval_fn(model) -> dict[str, float]`` — extra metrics at each evaluation (accuracy, …), stored in
  ``History.metrics``.
* ``sample_fn(model) -> str`` — a text sample at each sampling point, printed and stored in
  ``History.samples``.

Only parameters with ``requires_grad`` are optimised, so freezing layers before calling ``train`` is
enough. A run given ``checkpoint_dir`` saves atomically every ``checkpoint_every`` steps and at the end;
``resume=True`` continues from the newest checkpoint there — on CPU a resumed run ends with bit-identical
weights to an uninterrupted one (tests/test_training.py proves it with SIGKILL). Under ``torchrun`` the same
call trains with DistributedDataParallel (see :mod:`llm_companion.training.distributed`).

``train`` is one visible loop, chapter 4's ``plain_training`` (forward, backward, ``optimizer.step()``,
``zero_grad``) grown by what a real run needs: for each epoch, for each batch, the loss under autocast and its
backward, accumulated over ``grad_accum_steps`` batches; at a step the scheduled learning rate, clipping and
the update; then the periodic work, whose pieces are the helpers below it. What a checkpoint stores besides
weights and optimizer (the position in the data and the random states), and the replay that resumes in the
middle of an epoch, live in :mod:`llm_companion.training.resume`: ``train`` calls ``restore`` once at the start
and ``capture`` at each checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm_companion.models.checkpoint import capture_rng, restore_rng, save_checkpoint
from llm_companion.models.eval_mode import evaluating
from llm_companion.precision import use_bf16
from llm_companion.progress import progress
from llm_companion.training import distributed
from llm_companion.training import resume as run_state  # `resume` is train()'s flag
from llm_companion.training.losses import default_loss, evaluate, to_device


class TrainingError(ValueError):
    """A training run that cannot start as configured."""


@dataclass
class TrainConfig:
    """Settings of :func:`train`.

    Length: ``epochs`` passes over ``train_loader`` and/or at most ``max_steps`` optimizer steps (the first
    limit reached ends training; give at least one). One step consumes ``grad_accum_steps`` batches; an
    incomplete accumulation left at the very end is dropped.

    Optimizer: AdamW with ``lr``, ``betas`` and ``weight_decay`` applied, as in GPT-2, to every parameter
    with two or more dimensions (weight matrices and embeddings) and not to biases or LayerNorm parameters.
    Schedule: linear warmup over ``warmup_steps``, then constant ``lr`` — or, when ``min_lr`` is set, cosine
    decay from ``lr`` to ``min_lr`` at the last step. ``grad_clip`` clips the global gradient norm.

    Periodic work (``*_every`` are optimizer steps; ``0`` means at the end of every epoch; ``None`` never;
    unless ``None``, evaluation and sampling also run after the last step): ``eval_every`` computes train and
    validation loss on the first ``eval_batches`` batches of each loader (all when None) plus ``eval_fn``;
    ``sample_every`` calls ``sample_fn``; ``checkpoint_every`` saves (when ``checkpoint_dir`` is given), keeping
    the newest ``keep_checkpoints``. The live loss on the progress bar (and ``History.step_loss``) is read from
    the device every ``log_every`` steps, not every step, so a GPU never waits for it.

    ``seed`` seeds torch/numpy/random at the start of a fresh run (a resumed run continues from the
    checkpoint's random states); either way the run is isolated (:func:`isolated_rng`): the caller's
    generators are the same after :func:`train` as before. ``seed=None`` trains on the caller's generators.
    """

    epochs: int | None = 1
    max_steps: int | None = None
    lr: float = 4e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr: float | None = None
    grad_clip: float | None = None
    grad_accum_steps: int = 1
    bf16: bool = False  # bfloat16 autocast where the device has it natively (llm_companion.precision)
    eval_every: int | None = 0
    eval_batches: int | None = None
    sample_every: int | None = 0
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int | None = 123
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_steps is None:
            raise TrainingError("TrainConfig needs epochs or max_steps (or both)")
        for name in ("epochs", "max_steps", "grad_accum_steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise TrainingError(f"TrainConfig.{name} must be >= 1, got {v}")
        if self.lr <= 0:
            raise TrainingError(f"TrainConfig.lr must be > 0, got {self.lr}")
        self.betas = tuple(self.betas)


@dataclass
class History:
    """What a run measured. Evaluation points share one index across ``steps`` … ``val_loss``/``metrics``.

    ``step_loss`` holds the training loss of every optimizer step; ``samples`` holds ``{step, epoch,
    text}`` dicts; ``epochs`` are fractional (1.5 = halfway through the second epoch); ``tokens_seen`` and
    ``examples_seen`` count training inputs (over all processes) up to that point; ``wall_time`` is seconds
    since the run started (resumed runs add to it).
    """

    steps: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    tokens_seen: list[int] = field(default_factory=list)
    examples_seen: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def __repr__(self) -> str:
        if not self.steps:
            return f"History({len(self.step_loss)} steps, no evaluation yet)"
        return (f"History({self.steps[-1]} steps, {self.tokens_seen[-1]:,} tokens, "
                f"train loss {self.train_loss[-1]:.3f}, val loss {self.val_loss[-1]:.3f})")


# ------------------------------------------------------------------------------------------- helpers
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on ≥2-D tensors only (see :class:`TrainConfig`)."""
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() lists a tied matrix once
    if not params:
        raise TrainingError("the model has no trainable parameters (all have requires_grad=False); "
                            "unfreeze at least one layer")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): warmup, then constant or cosine to ``min_lr``.

    A pure function of the step, so the schedule needs no state of its own in a checkpoint.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.min_lr is None:
        return cfg.lr
    progress_ = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps - 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress_)))


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """Number of optimizer steps the run will take."""
    by_epochs = None if cfg.epochs is None else cfg.epochs * batches_per_epoch // cfg.grad_accum_steps
    if cfg.max_steps is None:
        return by_epochs
    return cfg.max_steps if by_epochs is None else min(cfg.max_steps, by_epochs)


def _first_tensor(batch) -> torch.Tensor | None:
    if torch.is_tensor(batch):
        return batch
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        t = _first_tensor(v)
        if t is not None:
            return t
    return None


def _input_size(batch) -> tuple[int, int]:
    """(tokens, examples) of a batch, read from its first tensor; (0, 0) when it holds none."""
    first = _first_tensor(batch)
    return (0, 0) if first is None else (first.numel(), first.shape[0])


def _due(every: int | None, step: int, epoch_ended: bool, last: bool) -> bool:
    """Whether periodic work set to run ``every`` steps (0: at each epoch's end; None: never) runs now."""
    if every is None:
        return False
    return last or (epoch_ended if every == 0 else step % every == 0)


@contextlib.contextmanager
def isolated_rng(seed: int | None) -> Iterator[None]:
    """Run the block on the caller's torch/numpy/random generators, then put their states back.

    With a ``seed`` the generators are seeded first, so the block's randomness (dropout masks, a DataLoader
    shuffled without its own generator, sampling) depends on the seed alone and the caller's streams are
    the same afterwards as before: the block has no side effect on them. ``GPTClassifier``'s seeded head
    works the same way (``torch.random.fork_rng``).
    """
    saved = capture_rng()
    try:
        if seed is not None:
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
        yield
    finally:
        restore_rng(saved)


# --------------------------------------------------------------------------------------------- train
def train(model: nn.Module, train_loader, val_loader, cfg: TrainConfig, *,
          loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
          eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
          sample_fn: Callable[[nn.Module], str] | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False,
          device: torch.device | str | None = None,
          optimizer: torch.optim.Optimizer | None = None) -> History:
    """Train ``model`` in place and return its :class:`History` (see the module docstring).

    ``val_loader`` may be None (no validation loss; ``val_loss`` records nan). ``device`` defaults to
    the model's device (the model is moved when one is given). ``optimizer`` defaults to
    :func:`make_optimizer`; pass your own to change it (its learning rate is still set by the schedule).
    ``resume=True`` continues from the newest checkpoint in ``checkpoint_dir`` or starts fresh if none.

    Randomness: with ``cfg.seed`` set, the run happens inside :func:`isolated_rng` — a fresh run is seeded
    with it, a resumed one continues from the checkpoint's random states, and the caller's generators are
    left as they were. With ``cfg.seed=None`` the run draws from (and advances) the caller's generators,
    like any PyTorch loop.
    """
    loss_fn = loss_fn or default_loss
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    n_batches = len(train_loader)
    if n_batches == 0:
        raise TrainingError("train_loader yields no batches; use more data, a smaller batch size or "
                            "drop_last=False")
    n_steps = total_steps(cfg, n_batches)
    if n_steps == 0:
        raise TrainingError(f"{n_batches} batches per epoch make no step with grad_accum_steps="
                            f"{cfg.grad_accum_steps}; lower grad_accum_steps or train longer")
    # bf16 only where the device computes it natively: emulated it is 30-50x slower than fp32
    cfg = replace(cfg, bf16=use_bf16(cfg.bf16, device, verbose=cfg.verbose and distributed.is_main()))
    optimizer = optimizer or make_optimizer(model, cfg)
    pos, saved = run_state.restore(checkpoint_dir if resume else None, model, optimizer, device)
    history = History.from_dict(saved["history"]) if saved is not None else History()
    main, world = distributed.is_main(), distributed.world_size()
    if saved is not None and main and cfg.verbose:
        print(f"resuming from step {pos.step} (epoch {pos.epoch}, batch {pos.batch_in_epoch})")
    rng = (isolated_rng(cfg.seed if saved is None else None) if cfg.seed is not None
           else contextlib.nullcontext())
    with rng, progress(total=n_steps, initial=pos.step, desc="training", unit="step", disable=not main) as bar:
        net = distributed.wrap_model(model) if distributed.is_distributed() else model
        t0 = time.perf_counter() - pos.elapsed0  # a resumed run's clock goes on from the checkpoint's
        losses = _StepLosses(history, bar)
        micro, running = 0, None  # micro-batches accumulated towards the next step, and their summed loss
        epoch_end_pending = False  # an accumulation ran past the epoch's end: its step reports the end
        # chapter 4's plain_training, grown: accumulation, DDP, bf16, the schedule, clipping, periodic work
        model.train()
        optimizer.zero_grad(set_to_none=True)
        while pos.step < n_steps and (cfg.epochs is None or pos.epoch < cfg.epochs):
            distributed.set_sampler_epoch(train_loader, pos.epoch)
            batches, epoch_order = run_state.epoch_batches(train_loader, saved, pos.batch_in_epoch)
            saved = None
            for batch in batches:
                pos.batch_in_epoch += 1
                batch = to_device(batch, device)
                micro += 1
                ends_step = micro == cfg.grad_accum_steps
                # DDP all-reduces gradients during backward; the micro-batches before a step need not
                with net.no_sync() if net is not model and not ends_step else contextlib.nullcontext():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                        loss = loss_fn(net, batch)
                    (loss / cfg.grad_accum_steps).backward()
                # summed on the device: reading a GPU value every micro-batch would stall it
                running = loss.detach().float() if running is None else running + loss.detach().float()
                tokens, examples = _input_size(batch)
                pos.tokens += tokens * world
                pos.examples += examples * world
                if not ends_step:
                    continue

                lr = lr_at(pos.step, cfg, n_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                pos.step += 1
                losses.add(running / cfg.grad_accum_steps)
                micro, running = 0, None
                bar.update(1)

                epoch_ended, epoch_end_pending = pos.batch_in_epoch == n_batches or epoch_end_pending, False
                last = pos.step == n_steps
                epoch_pos = pos.epoch + pos.batch_in_epoch / n_batches
                if pos.step % cfg.log_every == 0 or last:
                    losses.flush()
                if _due(cfg.eval_every, pos.step, epoch_ended, last):
                    losses.flush()
                    _record_evaluation(history, pos, model, train_loader, val_loader, cfg, loss_fn=loss_fn,
                                       eval_fn=eval_fn, device=device, epoch_pos=epoch_pos, lr=lr, t0=t0,
                                       verbose=main and cfg.verbose)
                if sample_fn is not None and main and _due(cfg.sample_every, pos.step, epoch_ended, last):
                    _record_sample(history, pos.step, epoch_pos, sample_fn(model), verbose=cfg.verbose)
                if checkpoint_dir is not None and (last or _due(cfg.checkpoint_every, pos.step, epoch_ended, last)):
                    losses.flush()
                    state = run_state.capture(pos, train_loader, epoch_order, elapsed=time.perf_counter() - t0,
                                              history=history.to_dict(), train_config=asdict(cfg))
                    if main:
                        save_checkpoint(checkpoint_dir, model=model, optimizer=optimizer, state=state,
                                        step=pos.step, keep=cfg.keep_checkpoints)
                    distributed.barrier()
                if pos.step >= n_steps:
                    break
            else:  # the loader ran out: the epoch is over
                pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
                epoch_end_pending = micro > 0
        losses.flush()
    model.eval()
    return history


# ---------------------------------------------------------------------------------------- periodic work
class _StepLosses:
    """Per-step losses kept on the device and copied to ``history.step_loss`` in batches.

    Reading a GPU value every step would make the GPU wait; one device→host copy (and one all-reduce)
    serves many steps, and every rank flushes at the same steps.
    """

    def __init__(self, history: History, bar):
        self.history, self.bar, self.pending = history, bar, []

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss)

    def flush(self) -> None:
        if self.pending:
            values = distributed.all_reduce_mean_tensor(torch.stack(self.pending).double()).tolist()
            self.history.step_loss.extend(values)
            self.pending.clear()
            self.bar.set_postfix(loss=f"{values[-1]:.3f}", refresh=False)


def _record_evaluation(history: History, pos: run_state.Position, model: nn.Module, train_loader, val_loader,
                       cfg: TrainConfig, *, loss_fn: Callable, eval_fn: Callable | None, device: torch.device,
                       epoch_pos: float, lr: float, t0: float, verbose: bool) -> None:
    """Append train/validation loss (and ``eval_fn``'s metrics) at the current position to the history."""
    tr = evaluate(model, train_loader, loss_fn, cfg.eval_batches, device=device, bf16=cfg.bf16)
    va = (evaluate(model, val_loader, loss_fn, cfg.eval_batches, device=device, bf16=cfg.bf16)
          if val_loader is not None else float("nan"))
    history.steps.append(pos.step)
    history.epochs.append(round(epoch_pos, 6))
    history.tokens_seen.append(pos.tokens)
    history.examples_seen.append(pos.examples)
    history.train_loss.append(tr)
    history.val_loss.append(va)
    history.lr.append(lr)
    history.wall_time.append(time.perf_counter() - t0)
    if eval_fn is not None:
        with evaluating(model), torch.no_grad():  # metrics see the model as it predicts
            extra = eval_fn(model)
        for k, v in extra.items():
            history.metrics.setdefault(k, []).append(float(v))
    if verbose:
        extra = "".join(f", {k} {v[-1]:.3f}" for k, v in history.metrics.items())
        print(f"epoch {epoch_pos:5.2f}  step {pos.step:6d}  train loss {tr:.3f}  val loss {va:.3f}{extra}")


def _record_sample(history: History, step: int, epoch_pos: float, text: str, *, verbose: bool) -> None:
    # only rank 0 generates (the caller checks); nothing collective happens inside sample_fn
    history.samples.append({"step": step, "epoch": round(epoch_pos, 6), "text": text})
    if verbose:
        print(f"sample @ step {step}: {text!r}")


# ---------------------------------------------------------------------------------------------- plots
def plot_losses(history: History, *, title: str = "Training and validation loss"):
    """Train and validation loss against epochs, with tokens seen on a twin x-axis; returns the Figure."""
    import matplotlib.pyplot as plt  # only the plot needs matplotlib; training runs without it

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history.epochs, history.train_loss, label="training loss")
    ax.plot(history.epochs, history.val_loss, linestyle="-.", label="validation loss")
    ax.set_xlabel("epochs")
    ax.set_ylabel("loss (cross-entropy)")
    ax.set_title(title)
    ax.legend(loc="upper right")
    top = ax.twiny()  # same curve against tokens: shares the y-axis, second x-axis on top
    top.plot(history.tokens_seen, history.train_loss, alpha=0)
    top.set_xlabel("tokens seen")
    fig.tight_layout()
    plt.close(fig)  # the caller displays it; avoid a second copy from the inline backend
    return fig
