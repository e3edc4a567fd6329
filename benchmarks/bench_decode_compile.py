"""What ``torch.compile`` of the plain one-token step costs and gives (gpt-fast's way), beside the compiled step.

One SmolLM2-135M-Instruct model: the time from ``torch.compile`` to the first compiled step's logits (Inductor
writes C++ and compiles it with the system's compiler; its cache lives in ``TORCHINDUCTOR_CACHE_DIR``, so run
the script twice with the same folder to see what a second process pays), the steps that recompile as the
KV cache grows, then decoding speed of the plain modules, ``torch.compile`` and ``inference.fast``'s step,
interleaved. Example::

    TORCHINDUCTOR_CACHE_DIR=/tmp/ind .venv/bin/python benchmarks/bench_decode_compile.py   # cold cache
    TORCHINDUCTOR_CACHE_DIR=/tmp/ind .venv/bin/python benchmarks/bench_decode_compile.py   # warm cache
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_decode import greedy  # noqa: E402

from llm_companion.inference import fast  # noqa: E402
from llm_companion.inference.quantize import WEIGHTS, quantize_model  # noqa: E402
from llm_companion.inference.smollm2 import load_smollm2  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", choices=WEIGHTS, default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new", type=int, default=32, help="tokens per timed decode (default 32)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_smollm2()
    model = quantize_model(model, args.weights)
    prompt = torch.tensor([tokenizer.encode("Once upon a time")])
    print(f"SmolLM2 {args.weights}, torch {torch.__version__}, {args.threads} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, Inductor cache {os.environ.get('TORCHINDUCTOR_CACHE_DIR')}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    def plain(idx, cache):
        return model(idx, cache, last_only=True)

    t0 = time.perf_counter()
    fast.step_function()
    print(f"  inference.fast's step (TorchScript): compiled in {time.perf_counter() - t0:.1f} s", flush=True)
    compiled = torch.compile(plain)
    engines = {"plain": plain, "step": fast.decoder(model),
               "compile": lambda idx, cache: (compiled if idx.shape[1] == 1 else plain)(idx, cache)}
    with torch.inference_mode():
        cache = model.new_cache(1)
        logits = plain(prompt, cache)[:, -1]
        for i in range(4):   # the first calls compile; a new cache length recompiles with dynamic shapes
            t0 = time.perf_counter()
            logits = compiled(logits.argmax(-1, keepdim=True), cache)[:, -1]
            print(f"  compiled step {i + 1}: {time.perf_counter() - t0:.1f} s", flush=True)
    rates: dict[str, list[float]] = {}
    same: dict[str, bool] = {}
    want = greedy(plain, model, prompt, args.new)
    for _ in range(args.repeats):
        for name, step in engines.items():
            t0 = time.perf_counter()
            got = greedy(step, model, prompt, args.new)
            rates.setdefault(name, []).append(args.new / (time.perf_counter() - t0))
            same[name] = torch.equal(got, want)
    for name, v in rates.items():
        print(f"  {name}: {statistics.median(v):.1f} tok/s, same tokens as plain: {same[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
