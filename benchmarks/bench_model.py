"""Speed of ``GPTModel`` against Hugging Face's ``GPT2LMHeadModel`` on the same weights, in one process.

Three workloads on the GPT-2 small configuration with random weights:

* training step: batch 4 × 256 tokens, cross-entropy, backward, AdamW step (tokens/s);
* prefill: one 1024-token prompt through the model, filling the KV cache and producing the next token's
  logits, as generation does (tokens/s);
* decode: greedy generation of 128 new tokens after a 32-token prompt with a KV cache (new tokens/s).

The two models run interleaved (ours, HF, HF, ours, …) so a noisy machine slows both alike; the table
shows medians and the ratio ours / HF. ``--bf16`` runs training and prefill under bf16 autocast and decodes
with bf16 weights. Run ``python benchmarks/bench_model.py --help`` for the options.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from llm_companion import GPTConfig, generate
from llm_companion.inference.fast import decoder
from llm_companion.models.hf_convert import model_from_hf_state_dict


def build_models(cfg: GPTConfig, attn: str):
    from transformers import GPT2Config, GPT2LMHeadModel  # benchmark-only dependency

    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
                        n_layer=cfg.n_layers, n_head=cfg.n_heads, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, attn_implementation=attn)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(hf_cfg)
    ours = model_from_hf_state_dict(hf.state_dict(), cfg)
    return ours, hf


def train_step_fn(model, is_hf: bool, batch: int, seq: int, bf16: bool, vocab: int) -> Callable[[], None]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (batch, seq), generator=g)
    y = torch.randint(0, vocab, (batch, seq), generator=g)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).logits if is_hf else model(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def prefill_fn(model, is_hf: bool, seq: int, bf16: bool, vocab: int) -> Callable[[], None]:
    model.eval()
    x = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(2))

    @torch.inference_mode()
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if is_hf:  # what HF's generate() does for the prompt: fill the cache, keep the last logits
                model(x, use_cache=True, logits_to_keep=1)
            else:
                decoder(model)(x, model.new_cache(1))  # the fast path generate(fast=True) takes
    return run


def decode_fn(model, is_hf: bool, prompt: int, new: int, vocab: int) -> Callable[[], torch.Tensor]:
    model.eval()
    x = torch.randint(0, vocab, (1, prompt), generator=torch.Generator().manual_seed(3))

    def run():
        if is_hf:
            return model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
        return generate(model, x, new, fast=True)
    return run


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def print_table(rows: list[tuple[str, float, float, float]], precision: str) -> None:
    """The results as a Markdown table: (workload, ours tok/s, HF tok/s, ratio) per row."""
    print("\n| workload | ours tok/s | HF tok/s | ours / HF |\n|---|---:|---:|---:|")
    for name, o, h, r in rows:
        print(f"| {name} ({precision}) | {o:.1f} | {h:.1f} | {r:.2f}x |")


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call for each function, alternating the order each round."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            times[n].append(timed(fns[n]))
    return {n: statistics.median(t) for n, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: shorter sequences, one repeat")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (training, prefill), bf16 weights (decode)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per workload (default 5, quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"], help="HF attention implementation")
    p.add_argument("--only", default="train,prefill,decode", help="comma-separated workloads to run")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 5)
    train_bt, prefill_t, decode_new = ((2, 64), 128, 16) if args.quick else ((4, 256), 1024, 128)
    cfg = GPTConfig.preset("gpt2-small")
    ours, hf = build_models(cfg, args.hf_attn)
    only = set(args.only.split(","))
    dtype = "bf16" if args.bf16 else "fp32"
    print(f"GPT-2 small, random weights, {dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"HF attention={args.hf_attn}, {repeats} timed round(s), median")
    rows = []

    def report(name: str, tokens: int, secs: dict[str, float]) -> None:
        o, h = tokens / secs["ours"], tokens / secs["hf"]
        rows.append((name, o, h, o / h))
        print(f"  {name:<32} ours {o:9.1f} tok/s   HF {h:9.1f} tok/s   ratio {o / h:5.2f}x", flush=True)

    if "train" in only:
        b, t = train_bt
        secs = interleaved({"ours": train_step_fn(ours, False, b, t, args.bf16, cfg.vocab_size),
                            "hf": train_step_fn(hf, True, b, t, args.bf16, cfg.vocab_size)}, repeats)
        report(f"train step (B={b}, T={t}, AdamW)", b * t, secs)
        ours, hf = build_models(cfg, args.hf_attn)  # fresh weights: training changed them
    if "prefill" in only:
        secs = interleaved({"ours": prefill_fn(ours, False, prefill_t, args.bf16, cfg.vocab_size),
                            "hf": prefill_fn(hf, True, prefill_t, args.bf16, cfg.vocab_size)}, repeats)
        report(f"prefill (B=1, T={prefill_t})", prefill_t, secs)
    if "decode" in only:
        if args.bf16:
            ours, hf = ours.to(torch.bfloat16), hf.to(torch.bfloat16)
        fo, fh = decode_fn(ours, False, 32, decode_new, cfg.vocab_size), decode_fn(hf, True, 32, decode_new,
                                                                                     cfg.vocab_size)
        same = torch.equal(fo()[:, 32:], fh()[:, 32:])
        secs = interleaved({"ours": fo, "hf": fh}, repeats, warmup=0)
        report(f"greedy decode ({decode_new} new, KV cache)", decode_new, secs)
        print(f"  decoded tokens identical to HF: {same}")

    print_table(rows, dtype)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
