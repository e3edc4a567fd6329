"""The measured sweep behind ``llm_companion.training.recipes.BOOKS``: short runs of several shapes on the books corpus.

Every shape trains from the same seed on the same cached token stream (``llm_companion.data.corpus``), with the
same tokens per step (2,048), peak lr, warmup fraction and cosine schedule over the sweep's length, bf16
autocast. The shapes are trained *interleaved* in one process (a few steps of each in turn), so background
load on a shared machine slows them alike: the tok/s *ratios* between shapes are what this measures well.
Each round records ``/proc/loadavg``. Validation loss is computed at fixed points on the same fixed, evenly
spread validation windows for every shape. A last phase times fp32 against bf16 autocast, interleaved too.

    python benchmarks/sweep_books.py --steps 120 --json benchmarks/sweep_books.json
    python benchmarks/sweep_books.py --steps 4 --eval-every 2 --shapes mini deep   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("LLM_COMPANION_PROGRESS", "off")

import numpy as np
import torch

from llm_companion import GPTConfig, GPTModel
from llm_companion.data.corpus import books_corpus, corpus_tokens
from llm_companion.training.loop import TrainConfig, lr_at, make_optimizer
from llm_companion.training.losses import calc_loss_batch

TOKENS_PER_STEP = 2048
# name: (n_layers, emb_dim, n_heads, context_length)
SHAPES = {
    "mini": (4, 192, 6, 256),       # the interim stand-in's gpt-mini preset
    "deep": (8, 192, 6, 256),       # twice the blocks; the 50,257-way head (most of the cost) unchanged
    "wide": (4, 256, 8, 256),       # a wider model: head and blocks both grow
    "narrow": (8, 128, 4, 256),     # narrow and deep: the cheapest head
    "mini-ctx128": (4, 192, 6, 128),  # gpt-mini with half the context (twice the rows per step)
}


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def model_config(shape: str) -> GPTConfig:
    n_layers, emb_dim, n_heads, ctx = SHAPES[shape]
    return GPTConfig(context_length=ctx, emb_dim=emb_dim, n_heads=n_heads, n_layers=n_layers, drop_rate=0.0)


def val_windows(val: np.ndarray, n: int = 64, span: int = 256) -> torch.Tensor:
    """``n`` windows of ``span + 1`` tokens spread evenly over the validation stream (every work's tail)."""
    starts = np.linspace(0, len(val) - span - 2, n).astype(np.int64)
    return torch.from_numpy(np.stack([val[s:s + span + 1].astype(np.int64) for s in starts]))


@torch.no_grad()
def val_loss(model: GPTModel, windows: torch.Tensor, bf16: bool) -> float:
    """Mean next-token loss on ``windows`` (each split into pieces of the model's context)."""
    ctx = model.cfg.context_length
    span = windows.shape[1] - 1
    model.eval()
    losses = []
    for s in range(0, span, ctx):
        piece = windows[:, s:s + ctx + 1]
        for b in range(0, len(piece), 16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                losses.append(float(calc_loss_batch(piece[b:b + 16, :-1], piece[b:b + 16, 1:], model)))
    model.train()
    return sum(losses) / len(losses)


class Run:
    """One shape's short training run, advanced a few steps at a time."""

    def __init__(self, shape: str, train_ids: torch.Tensor, cfg: TrainConfig, steps: int, seed: int):
        self.shape, self.cfg, self.steps = shape, cfg, steps
        torch.manual_seed(seed)
        self.model = GPTModel(model_config(shape))
        self.params = sum(p.numel() for p in self.model.parameters())
        self.opt = make_optimizer(self.model, cfg)
        ctx = self.model.cfg.context_length
        self.batch = TOKENS_PER_STEP // ctx
        n_windows = (len(train_ids) - 1) // ctx
        g = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n_windows, generator=g)[: steps * self.batch]  # (steps * batch,)
        self.train_ids, self.ctx = train_ids, ctx
        self.step, self.seconds, self.curve = 0, 0.0, []

    def advance(self, n: int) -> None:
        t0 = time.perf_counter()
        for _ in range(min(n, self.steps - self.step)):
            idx = self.order[self.step * self.batch:(self.step + 1) * self.batch]
            rows = torch.stack([self.train_ids[i * self.ctx:i * self.ctx + self.ctx + 1] for i in idx.tolist()])
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.step, self.cfg, self.steps)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16):
                loss = calc_loss_batch(rows[:, :-1], rows[:, 1:], self.model)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.opt.step()
            self.step += 1
        self.seconds += time.perf_counter() - t0

    @property
    def tok_s(self) -> float:
        return self.step * TOKENS_PER_STEP / self.seconds if self.seconds else float("nan")


def precision_ratio(train_ids: torch.Tensor, shapes: list[str], steps: int, seed: int) -> dict[str, dict]:
    """tok/s of fp32 and bf16 autocast for each shape, alternating 2-step chunks of the two."""
    out = {}
    for shape in shapes:
        runs = {}
        for bf16 in (False, True):
            cfg = TrainConfig(epochs=None, max_steps=steps, lr=2e-3, warmup_steps=1, min_lr=2e-4, grad_clip=1.0,
                              bf16=bf16)
            runs[bf16] = Run(shape, train_ids, cfg, steps, seed)
            runs[bf16].advance(1)  # warm-up step, not timed
            runs[bf16].step, runs[bf16].seconds = 0, 0.0
        while any(r.step < steps for r in runs.values()):
            for r in runs.values():
                r.advance(2)
        out[shape] = {"fp32_tok_s": runs[False].tok_s, "bf16_tok_s": runs[True].tok_s,
                      "bf16_speedup": runs[True].tok_s / runs[False].tok_s, "loadavg": loadavg()}
        print(f"precision {shape}: fp32 {runs[False].tok_s:,.0f} tok/s, bf16 {runs[True].tok_s:,.0f} tok/s "
              f"(x{out[shape]['bf16_speedup']:.2f}), loadavg {loadavg()}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps per shape")
    ap.add_argument("--eval-every", type=int, default=30)
    ap.add_argument("--chunk", type=int, default=5, help="steps of one shape before switching to the next")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--precision-steps", type=int, default=8, help="timed steps per precision (0: skip)")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--val-windows", type=int, default=32, help="validation windows of 256 tokens")
    ap.add_argument("--minutes", type=float, default=None,
                    help="stop the training rounds after this long (every shape has trained equally far)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train_np, val_np = corpus_tokens(books_corpus(verbose=False), verbose=False)
    train_ids = torch.from_numpy(train_np.astype(np.int64))
    windows = val_windows(val_np, args.val_windows)
    cfg = TrainConfig(epochs=None, max_steps=args.steps, lr=args.lr, warmup_steps=max(1, args.steps // 10),
                      min_lr=args.lr / 10, grad_clip=1.0, bf16=True)
    t_start = time.perf_counter()
    runs = [Run(s, train_ids, cfg, args.steps, args.seed) for s in args.shapes]
    rounds = []
    while any(r.step < r.steps for r in runs):
        if args.minutes is not None and time.perf_counter() - t_start > 60 * args.minutes:
            for r in runs:  # a last evaluation where the rounds stopped
                if not r.curve or r.curve[-1]["step"] != r.step:
                    r.curve.append({"step": r.step, "tokens": r.step * TOKENS_PER_STEP,
                                    "val_loss": val_loss(r.model, windows, True)})
            print(f"stopping after {args.minutes} minutes at step {runs[0].step}", flush=True)
            break
        for r in runs:
            r.advance(args.chunk)
            if r.step % args.eval_every == 0 and (not r.curve or r.curve[-1]["step"] != r.step):
                r.curve.append({"step": r.step, "tokens": r.step * TOKENS_PER_STEP,
                                "val_loss": val_loss(r.model, windows, True)})
        rounds.append({"step": runs[0].step, "loadavg": loadavg(), "elapsed": time.perf_counter() - t_start})
        line = "  ".join(f"{r.shape} {r.step} {r.curve[-1]['val_loss'] if r.curve else float('nan'):.3f}"
                         for r in runs)
        print(f"[{rounds[-1]['elapsed']:6.0f} s, loadavg {rounds[-1]['loadavg']}] {line}", flush=True)

    base = runs[0].tok_s
    results = []
    for r in runs:
        results.append({"shape": r.shape, "layers_dim_heads_ctx": SHAPES[r.shape], "params": r.params,
                        "tok_s": r.tok_s, "tok_s_ratio": r.tok_s / base, "curve": r.curve})
    precision = precision_ratio(train_ids, args.shapes[:2], args.precision_steps, args.seed) \
        if args.precision_steps else {}
    print(f"\n{'shape':12} {'L×d, ctx':>13} {'params':>7} {'tok/s':>7} {'ratio':>6}  val loss at tokens")
    for r in results:
        n_layers, emb_dim, _, ctx = r["layers_dim_heads_ctx"]
        curve = "  ".join(f"{p['tokens'] / 1e3:.0f}k {p['val_loss']:.3f}" for p in r["curve"])
        print(f"{r['shape']:12} {f'{n_layers}×{emb_dim}, {ctx}':>13} {r['params'] / 1e6:6.1f}M {r['tok_s']:7,.0f} "
              f"{r['tok_s_ratio']:6.2f}  {curve}")
    loads = [float(x["loadavg"].split()[0]) for x in rounds if x["loadavg"] != "n/a"]
    if loads:
        print(f"loadavg (1 min) over the sweep: min {min(loads):.2f}, median {sorted(loads)[len(loads) // 2]:.2f}, "
              f"max {max(loads):.2f}; {time.perf_counter() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "rounds": rounds, "precision": precision,
                       "settings": vars(args) | {"tokens_per_step": TOKENS_PER_STEP},
                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "machine": platform.processor() or platform.machine(),
                       "seconds": time.perf_counter() - t_start}, f, indent=1)


if __name__ == "__main__":
    main()
