"""Speed of our ``LlamaModel`` against transformers' ``LlamaForCausalLM`` on SmolLM2-135M-Instruct, one process.

Both models load the same GGUF file (Q4_1, dequantized to fp32; their weights are identical). Workloads:

* prefill: one 512-token prompt, filling the KV cache and producing the next token's logits (tokens/s);
* decode: greedy generation of 128 new tokens after the 37-token chat prompt, KV cache on (new tokens/s).

The models run interleaved (ours, HF, HF, ours, …) so background load slows both alike; the table shows
medians and the ratio ours / HF. Decoding one token reads every weight once, so it is bounded by memory
bandwidth: the script measures the machine's streaming read bandwidth (a large ``sum``) and reports which
share of it decoding reaches (weight bytes per token × tokens/s).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import interleaved, print_table  # noqa: E402  (the GPT benchmark's interleaving and table)

from llm_companion.inference.fast import decoder  # noqa: E402
from llm_companion.inference.generation import generate  # noqa: E402
from llm_companion.inference.smollm2 import encode_chat, load_smollm2  # noqa: E402
from llm_companion.models.llama import weight_bytes_per_token  # noqa: E402


def read_bandwidth(n_bytes: int = 1 << 29, repeats: int = 5) -> float:
    """Best observed streaming read rate in bytes/s (``sum`` of an fp32 tensor larger than any cache)."""
    x = torch.ones(n_bytes // 4)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return n_bytes / best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per workload (default 5)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--prefill", type=int, default=512, help="prompt length of the prefill workload (default 512)")
    p.add_argument("--new", type=int, default=128, help="tokens to decode (default 128)")
    p.add_argument("--only", default="prefill,decode", help="comma-separated workloads to run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM  # benchmark-only dependency

    ours, tok, info = load_smollm2()
    hf = AutoModelForCausalLM.from_pretrained(info.path.parent, gguf_file=info.path.name,
                                              dtype=torch.float32).eval()
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"] * 3
    print(f"{info.describe()}; fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.repeats} timed rounds, median; load average {' '.join(load)}", flush=True)
    rows = []

    def report(name: str, tokens: int, secs: dict[str, float]) -> tuple[float, float]:
        o, h = tokens / secs["ours"], tokens / secs["hf"]
        rows.append((name, o, h, o / h))
        print(f"  {name:<34} ours {o:8.1f} tok/s   HF {h:8.1f} tok/s   ratio {o / h:5.2f}x", flush=True)
        return o, h

    only = set(args.only.split(","))
    if "prefill" in only:
        x = torch.randint(0, ours.cfg.vocab_size, (1, args.prefill), generator=torch.Generator().manual_seed(2))

        @torch.inference_mode()
        def ours_prefill():
            decoder(ours)(x, ours.new_cache(1))  # the fast path generate(fast=True) takes

        @torch.inference_mode()
        def hf_prefill():  # what HF's generate() does for the prompt: fill the cache, keep the last logits
            hf(x, use_cache=True, logits_to_keep=1)

        report(f"prefill (B=1, T={args.prefill})", args.prefill,
               interleaved({"ours": ours_prefill, "hf": hf_prefill}, args.repeats))
    if "decode" in only:
        x = torch.tensor([encode_chat(tok, "What is the capital of France?")])

        def ours_decode():
            return generate(ours, x, args.new, fast=True)

        def hf_decode():
            return hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new,
                               do_sample=False, use_cache=True, pad_token_id=2)

        # both decode exactly args.new tokens, through <|im_end|> and beyond: ours is given no eos_id, and HF's
        # eos is switched off (min_new_tokens instead would mask <|im_end|>'s logit and change the tokens)
        hf.generation_config.eos_token_id = None

        same = torch.equal(ours_decode(), hf_decode())
        o, h = report(f"greedy decode ({args.new} new, KV cache)", args.new,
                      interleaved({"ours": ours_decode, "hf": hf_decode}, args.repeats, warmup=0))
        per_token = weight_bytes_per_token(ours)
        bw = read_bandwidth()
        print(f"  decoded tokens identical to HF: {same}")
        print(f"  weights read per token: {per_token / 1e6:.0f} MB (fp32); streaming read bandwidth here "
              f"{bw / 1e9:.1f} GB/s → at most {bw / per_token:.0f} tok/s; ours reaches "
              f"{o * per_token / 1e9:.1f} GB/s ({o * per_token / bw:.0%}), HF {h * per_token / 1e9:.1f} GB/s "
              f"({h * per_token / bw:.0%})")
    print_table(rows, "fp32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
