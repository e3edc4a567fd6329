"""Where the time of SmolLM2's decoding step and prefill goes, per op (``torch.profiler``), for one precision.

Decode: ``--new`` greedy steps through ``generate(fast=True)``'s compiled step; prefill: one ``--prefill``-token
prompt through the model. Prints each workload's tokens/s and the ops that take the most time, grouped as
quantized products, fp32 products, attention and the rest, so that what stops a target is a number.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.profiler import profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_decode import greedy  # noqa: E402

from llm_companion.inference import fast  # noqa: E402
from llm_companion.inference.quantize import WEIGHTS, quantize_model  # noqa: E402
from llm_companion.inference.smollm2 import load_smollm2  # noqa: E402

GROUPS = {"quantized product": ("_weight_int4pack", "_weight_int8pack"),
          "fp32 product": ("aten::mm", "aten::bmm", "aten::addmm", "aten::linear"),
          "attention": ("scaled_dot_product", "_flash_attention"),
          "dequantize (prefill)": ("bitwise", "aten::__and__", "aten::__rshift__", "aten::stack")}


def table(prof, seconds: float, tokens: int, rows: int) -> None:
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups = dict.fromkeys([*GROUPS, "everything else"], 0.0)
    for e in events:
        name = next((g for g, keys in GROUPS.items() if any(k in e.key for k in keys)), "everything else")
        groups[name] += e.self_cpu_time_total
    print(f"  {tokens / seconds:.1f} tok/s; {1e3 * seconds / tokens:.2f} ms per token; by group (share of op time):")
    for name, us in groups.items():
        print(f"    {name:<22} {us / 1e3 / tokens:7.3f} ms/token  {us / total:6.1%}")
    print("  top ops:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]:
        print(f"    {e.key:<48} {e.count:>7} calls  {e.self_cpu_time_total / 1e3 / tokens:7.3f} ms/token")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", choices=WEIGHTS, default="q4")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--rows", type=int, default=8, help="ops listed per workload (default 8)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_smollm2()
    model = quantize_model(model, args.weights)
    step = fast.decoder(model)
    prompt = torch.tensor([tokenizer.encode("Once upon a time")])
    long = torch.randint(0, model.cfg.vocab_size, (1, args.prefill), generator=torch.Generator().manual_seed(0))
    greedy(step, model, prompt, 8)  # warm-up: TorchScript compiles and specialises
    print(f"SmolLM2 {args.weights}, {args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for workload in ("decode", "prefill"):
        with torch.inference_mode(), profile() as prof:
            t0 = time.perf_counter()
            if workload == "decode":
                greedy(step, model, prompt, args.new)
            else:
                step(long, model.new_cache(1))
            seconds = time.perf_counter() - t0
        print(f"{workload} (profiled, so a little slower than unprofiled):")
        table(prof, seconds, args.new if workload == "decode" else args.prefill, args.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
