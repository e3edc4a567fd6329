"""Decoding and prefill speed of the ways to run one token step, for SmolLM2 and GPT-2 small, one process.

Issue 35's measurement: the plain model (eager modules), the compiled step of ``llm_companion.inference.fast``
(``generate(fast=True)``), optionally an earlier ``fast.py`` (``--baseline FILE``, e.g. the TorchScript +
timed row-split version: ``git show 1b33b4a:llm_companion/inference/fast.py > /tmp/old_fast.py``) and
``torch.compile`` of the plain one-token step (``--compile``, gpt-fast's way; compile time counted, Inductor's
on-disk cache as it is), and llama.cpp's ``llama-bench`` on the same GGUF (``--llama-bench PATH``).
Models: SmolLM2-135M-Instruct with fp32, int8 and q4 linear layers, and GPT-2 small's shape (random weights)
in fp32 and q4. Every engine runs the same greedy loop (prefill the prompt, then one token per step),
interleaved round by round so that background load slows them alike; medians are printed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_quant import llama_bench  # noqa: E402

from llm_companion import GPTConfig, GPTModel  # noqa: E402
from llm_companion.inference import fast  # noqa: E402
from llm_companion.inference.quantize import quantize_model  # noqa: E402
from llm_companion.inference.smollm2 import load_smollm2  # noqa: E402


def greedy(step, model, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """``new`` greedy tokens through ``step(idx, cache) → logits (B, 1, V)``, as ``generate`` runs them."""
    with torch.inference_mode():
        cache = model.new_cache(1)
        logits = step(prompt, cache)[:, -1]
        out = []
        for _ in range(new):
            tok = logits.argmax(-1, keepdim=True)
            out.append(tok)
            if len(out) < new:
                logits = step(tok, cache)[:, -1]
    return torch.cat(out, 1)


def engines(model, baseline, compiled: bool) -> dict:
    """name → ``(idx, cache) → logits`` for ``model``."""
    out = {"plain": lambda idx, cache: model(idx, cache, last_only=True), "step": fast.decoder(model)}
    if baseline is not None:
        out["before"] = baseline.decoder(model)
    if compiled:
        plain = torch.compile(out["plain"])
        out["compile"] = lambda idx, cache: (plain if idx.shape[1] == 1 else out["plain"])(idx, cache)
    return out


def load_models(gpt: bool) -> tuple[dict, object, object]:
    models = {}
    for weights in ("fp32", "int8", "q4"):
        model, tokenizer, info = load_smollm2()
        models[f"smollm2 {weights}"] = quantize_model(model, weights)
    if gpt:
        for weights in ("fp32", "q4"):
            torch.manual_seed(0)
            models[f"gpt2-small {weights}"] = quantize_model(GPTModel(GPTConfig.preset("gpt2-small")).eval(), weights)
    return models, tokenizer, info


def timed_rounds(args, runs: dict, models: dict, prompt, long, info) -> tuple[dict, dict]:
    """Interleaved rounds: ``{(model, engine, workload): [tok/s]}`` and llama-bench's ``{workload: [tok/s]}``."""
    times: dict[tuple[str, str, str], list[float]] = {}
    theirs: dict[str, list[float]] = {"decode": [], "prefill": []}
    for r in range(args.repeats):
        for name, by_engine in runs.items():
            order = list(by_engine.items())
            for engine, step in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                greedy(step, models[name], prompt, args.new)
                times.setdefault((name, engine, "decode"), []).append(args.new / (time.perf_counter() - t0))
                if engine != "compile":
                    t0 = time.perf_counter()
                    with torch.inference_mode():
                        step(long, models[name].new_cache(1))
                    times.setdefault((name, engine, "prefill"), []).append(args.prefill / (time.perf_counter() - t0))
        if args.llama_bench:
            for k, v in llama_bench(args.llama_bench, str(info.path), args.threads, args.prefill, args.new).items():
                theirs[k].append(v)
        print(f"round {r + 1}/{args.repeats} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    return times, theirs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", metavar="FILE", help="an earlier inference/fast.py to time beside today's")
    p.add_argument("--compile", action="store_true", help="also torch.compile the plain one-token step")
    p.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH"), metavar="PATH")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new", type=int, default=128, help="tokens to decode (default 128)")
    p.add_argument("--prefill", type=int, default=512, help="prompt length of the prefill workload (default 512)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-gpt", action="store_true", help="SmolLM2 only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    baseline = None
    if args.baseline:
        spec = importlib.util.spec_from_file_location("baseline_fast", args.baseline)
        baseline = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(baseline)
    models, tokenizer, info = load_models(not args.no_gpt)
    print(f"{torch.__version__}, {args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    prompt = torch.tensor([tokenizer.encode("Once upon a time")])
    long = torch.randint(0, 49152, (1, args.prefill), generator=torch.Generator().manual_seed(0))
    runs = {name: engines(m, baseline, args.compile) for name, m in models.items()}
    for name, by_engine in runs.items():   # warm-up (TorchScript, torch.compile); every engine's tokens
        want = None
        for engine, step in by_engine.items():
            t0 = time.perf_counter()
            got = greedy(step, models[name], prompt, 8)
            print(f"  {name} {engine}: first 8 tokens in {time.perf_counter() - t0:.1f} s, same as plain: "
                  f"{want is None or torch.equal(got, want)}", flush=True)
            want = got if want is None else want
    times, theirs = timed_rounds(args, runs, models, prompt, long, info)
    print("\n| model | engine | decode tok/s | prefill tok/s |\n|---|---|---:|---:|")
    for (name, engine, work), v in times.items():
        if work == "decode":
            pre = times.get((name, engine, "prefill"))
            cell = f"{statistics.median(pre):.1f}" if pre else "-"
            print(f"| {name} | {engine} | {statistics.median(v):.1f} | {cell} |")
    if theirs["decode"]:
        print(f"| llama.cpp (same GGUF) | llama-bench | {statistics.median(theirs['decode']):.1f} | "
              f"{statistics.median(theirs['prefill']):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
