"""Training throughput of ``llm_companion.training.loop.train`` and its overhead over a bare loop.

For each model (chapter 4's quick-profile model and the GPT-2 small architecture) and precision (fp32, bf16
autocast) it times ``train()`` and a bare forward/backward/AdamW-step loop on the *same* batches from the same
DataLoader, alternating the two, and reports training tokens/s and the loop's overhead
(``train`` time / bare time - 1; target < 5%).

    python benchmarks/bench_training.py                 # CPU, both models
    python benchmarks/bench_training.py --device cuda --steps 30
    python benchmarks/bench_training.py --models quick --precisions fp32 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("LLM_COMPANION_PROGRESS", "off")  # time the loop, not terminal output

import torch
from torch.utils.data import DataLoader, TensorDataset

from llm_companion import GPTConfig, GPTModel
from llm_companion.training.loop import TrainConfig, make_optimizer, train
from llm_companion.training.losses import calc_loss_batch

MODELS = {
    # chapter 4's quick profile: (config, batch size)
    "quick": (GPTConfig.preset("gpt2-small", emb_dim=128, n_layers=4, n_heads=4, context_length=64), 2),
    # the GPT-2 small architecture at the reference book's training context and batch
    "gpt2-small": (GPTConfig.preset("gpt2-small", context_length=256), 2),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(model, loader, optimizer, device, bf16: bool) -> None:
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = calc_loss_batch(x, y, model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def library_loop(model, loader, optimizer, device, bf16: bool) -> None:
    cfg = TrainConfig(epochs=1, lr=1e-4, bf16=bf16, eval_every=None, sample_every=None, seed=None, verbose=False)
    train(model, loader, None, cfg, optimizer=optimizer, device=device)


def bench(name: str, precision: str, steps: int, repeats: int, device: torch.device) -> dict:
    cfg, batch = MODELS[name]
    bf16 = precision == "bf16"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (steps * batch, cfg.context_length), generator=g)
    y = torch.randint(0, cfg.vocab_size, (steps * batch, cfg.context_length), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    torch.manual_seed(0)
    model = GPTModel(cfg).to(device)
    opt = make_optimizer(model, TrainConfig(lr=1e-4))
    warm = DataLoader(TensorDataset(x[:batch], y[:batch]), batch_size=batch)
    bare_loop(model, warm, opt, device, bf16)  # allocator, kernels and optimizer state warm for both
    library_loop(model, warm, opt, device, bf16)
    times = {"bare": [], "train": []}
    for _ in range(repeats):
        for kind, fn in (("bare", bare_loop), ("train", library_loop)):
            _sync(device)
            t = time.perf_counter()
            fn(model, loader, opt, device, bf16)
            _sync(device)
            times[kind].append(time.perf_counter() - t)
    bare, lib = statistics.median(times["bare"]), statistics.median(times["train"])
    tokens = steps * batch * cfg.context_length
    return {"model": name, "precision": precision, "params": model.num_parameters(), "batch": batch,
            "context": cfg.context_length, "steps": steps, "tokens_per_s_train": tokens / lib,
            "tokens_per_s_bare": tokens / bare, "overhead_pct": 100 * (lib / bare - 1),
            "times_bare": times["bare"], "times_train": times["train"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="quick,gpt2-small")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per timed run (default: 16 quick, 2 gpt2-small on CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    device = torch.device(args.device)
    results = []
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print(f"{'model':11} {'precision':9} {'params':>12} {'tokens/s train()':>17} {'tokens/s bare':>14} {'overhead':>9}")
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            steps = args.steps or (16 if name == "quick" or device.type != "cpu" else 2)
            r = bench(name, precision, steps, args.repeats, device)
            results.append(r)
            print(f"{name:11} {precision:9} {r['params']:>12,} {r['tokens_per_s_train']:>17,.0f} "
                  f"{r['tokens_per_s_bare']:>14,.0f} {r['overhead_pct']:>8.1f}%", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "torch": torch.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
