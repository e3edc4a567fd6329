"""Serving overhead: ``llm-companion serve``'s API against ``generate_stream`` alone, in one process, loopback only.

A bounded load: ``--requests`` chat requests (default 40; greedy, ``--max-tokens`` each) at concurrency 1, 2 and 4
against the server (uvicorn in a thread of this process, streamed chat completions read by ``httpx`` over
127.0.0.1), and the same prompts through the library's KV-cache ``generate_stream`` directly, with no server. At
concurrency 1 the two alternate request by request (server then direct for one prompt, direct then server for the
next, …) so that background load slows both alike; the overhead is also given as the median of these pairs' ratios,
which a shared machine disturbs least. Per request: time to first token (TTFT: request sent → first text piece;
direct: call → first token id) and tokens/s (completion tokens / whole request time). The table shows p50 and p95
and the aggregate throughput (all tokens / wall time); the target is a server overhead of at most 10% of tokens/s
at concurrency 1. Requests queue for the one model, so higher concurrency raises TTFT, not throughput.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

# questions with long answers, so that most replies run to --max-tokens and tokens/s measures decoding
QUESTIONS = ["Write a short story about a robot who learns to paint.", "Explain how a bicycle works.",
             "Describe the water cycle in detail.", "Give me ten tips for studying well.",
             "Write a poem about the sea.", "Explain photosynthesis to a child.",
             "Describe a day in the life of a medieval farmer.", "List the planets and one fact about each."]
_local = threading.local()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def direct(engine, question: str, max_tokens: int) -> dict:
    """One request through ``generate_stream`` alone (the engine's prompt, no decoding of text, no server)."""
    from llm_companion import generate_stream

    ids = engine.encode([{"role": "user", "content": question}])
    t0 = time.perf_counter()
    first, n = None, 0
    for _ in generate_stream(engine.model, torch.tensor([ids]), max_tokens, eos_id=engine.eos_id):
        n += 1
        last = time.perf_counter()
        first = first or last
    t1 = time.perf_counter()
    return {"ttft": first - t0, "tokens": n, "seconds": t1 - t0, "decode": (first, last)}


def served(url: str, model: str, question: str, max_tokens: int) -> dict:
    """One streamed chat completion over HTTP (one keep-alive connection per client thread, as clients do)."""
    import httpx

    if not hasattr(_local, "client"):
        _local.client = httpx.Client(timeout=600)
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, usage = None, None
    with _local.client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            if any(c["delta"].get("content") for c in ev["choices"]):
                last = time.perf_counter()
                first = first or last
    t1 = time.perf_counter()
    return {"ttft": (first or t1) - t0, "tokens": usage["completion_tokens"], "seconds": t1 - t0,
            "decode": (first, last) if first else None}


def summarize(name: str, runs: list[dict], wall: float) -> dict:
    rates = [r["tokens"] / r["seconds"] for r in runs]
    ttft = [r["ttft"] * 1000 for r in runs]
    return {"name": name, "n": len(runs), "ttft_p50_ms": pct(ttft, 50), "ttft_p95_ms": pct(ttft, 95),
            "tok_s_p50": pct(rates, 50), "tok_s_p95_low": pct(rates, 5),
            "throughput_tok_s": sum(r["tokens"] for r in runs) / wall,
            "mean_tokens": sum(r["tokens"] for r in runs) / len(runs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="smollm2 (default) or a saved assistant's directory")
    p.add_argument("--requests", type=int, default=40, help="requests per concurrency level (default 40)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per reply (default 32)")
    p.add_argument("--concurrency", default="1,2,4", help="comma-separated levels (default 1,2,4)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import uvicorn

    from llm_companion.serving import create_app, load_engine

    engine = load_engine(args.model, device="cpu")
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]
    # warm-up: one of each, both ways
    direct(engine, questions[0], 4)
    served(url, engine.name, questions[0], 4)

    rows, paired = [], None
    levels = [int(c) for c in args.concurrency.split(",")]
    for level in levels:
        if level == 1:  # interleaved with the direct runs
            s_runs, d_runs, s_wall, d_wall = [], [], 0.0, 0.0
            for i, q in enumerate(questions):
                for way in ("served", "direct") if i % 2 == 0 else ("direct", "served"):  # alternate who goes first
                    t = time.perf_counter()
                    if way == "served":
                        s_runs.append(served(url, engine.name, q, args.max_tokens))
                        s_wall += time.perf_counter() - t
                    else:
                        d_runs.append(direct(engine, q, args.max_tokens))
                        d_wall += time.perf_counter() - t
            rows.append(summarize("generate_stream alone", d_runs, d_wall))
            rows.append(summarize("server, concurrency 1", s_runs, s_wall))
            # each server request against the direct run of the same prompt next to it
            pair = sorted((s["tokens"] / s["seconds"]) / (d["tokens"] / d["seconds"]) for s, d in zip(s_runs, d_runs))
            paired = pair[len(pair) // 2]
        else:
            t = time.perf_counter()
            with ThreadPoolExecutor(level) as pool:
                runs = list(pool.map(lambda q: served(url, engine.name, q, args.max_tokens), questions))
            rows.append(summarize(f"server, concurrency {level}", runs, time.perf_counter() - t))
    server.should_exit = True

    print(f"\n{engine.description}; {args.requests} requests per row, greedy, up to {args.max_tokens} tokens each; "
          f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs")
    print("NOTE: the machine was shared with other jobs; absolute times are noisy, compare rows (the direct and "
          "concurrency-1 server requests alternate).")
    print("| run | tokens/reply | TTFT p50 ms | TTFT p95 ms | tok/s p50 | tok/s p5 (slow end) | throughput tok/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['mean_tokens']:.1f} | {r['ttft_p50_ms']:.0f} | {r['ttft_p95_ms']:.0f} | "
              f"{r['tok_s_p50']:.1f} | {r['tok_s_p95_low']:.1f} | {r['throughput_tok_s']:.1f} |")
    base = next((r for r in rows if r["name"] == "generate_stream alone"), None)
    one = next((r for r in rows if r["name"] == "server, concurrency 1"), None)
    if base and one:
        overhead = 1 - one["tok_s_p50"] / base["tok_s_p50"]
        print(f"server overhead at concurrency 1: {overhead:+.1%} of p50 tokens/s; {1 - paired:+.1%} as the median "
              f"over requests of 1 - (server tokens/s / the same prompt's direct tokens/s, run next to it); "
              f"target <= 10%: {'met' if 1 - paired <= 0.10 else 'missed'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": engine.name, "max_tokens": args.max_tokens, "rows": rows,
                       "paired_overhead": 1 - paired if base and one else None}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
