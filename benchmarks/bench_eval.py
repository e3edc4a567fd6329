"""Reproduction benchmark for chapter 9: SmolLM2-135M-Instruct on HellaSwag, ARC-Easy, ARC-Challenge, PIQA and
OpenBookQA, scored by the book's ``llm_companion.evaluation`` and by EleutherAI's lm-evaluation-harness
(``lm-eval``, HF backend, transformers loading the same GGUF) on the same items, in one process.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/bench_eval.py --limit 200          # seeded subset per task
    .venv/bin/python benchmarks/bench_eval.py                      # every item (hours on 2 CPU cores)

Writes ``benchmarks/results/eval_smollm2_<limit or full>_ours.json`` (the report card, every item's
prediction), ``…_lmeval.json`` (lm-eval's per-item predictions) and ``…_agreement.json``; prints a Markdown
summary. lm-eval runs in chunks whose results are kept (``--work``), so an interrupted full run resumes.
Speed is the ratio of items/s of the two scorers on the same HellaSwag items in this process (the
shared-context path against lm-eval's one forward per request).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

TASKS = {  # ours -> lm-eval task name in the generated configs
    "hellaswag": "hellaswag_local", "arc-easy": "arc_easy_local", "arc-challenge": "arc_challenge_local",
    "piqa": "piqa_local", "openbookqa": "openbookqa_local",
}
RESULTS = Path(__file__).parent / "results"

YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
{extra}doc_to_text: "{text}"
doc_to_target: "{target}"
doc_to_choice: "{choice}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
# lm-eval 0.4's own prompts (tasks/hellaswag, arc, piqa, openbookqa), on the mirror's local files
SPEC = {
    "hellaswag": dict(extra="process_docs: !function utils.process_docs\n", text="{{query}}", target="{{label}}",
                      choice="choices"),
    "arc-easy": dict(extra="", text="Question: {{question}}\\nAnswer:", target="{{gold}}", choice="{{choices}}"),
    "arc-challenge": dict(extra="", text="Question: {{question}}\\nAnswer:", target="{{gold}}",
                          choice="{{choices}}"),
    "piqa": dict(extra="", text="Question: {{goal}}\\nAnswer:", target="{{label}}", choice="{{[sol1, sol2]}}"),
    "openbookqa": dict(extra="", text="{{question}}", target="{{gold}}", choice="{{choices}}"),
}
FILES = {"hellaswag": "eval-hellaswag", "arc-easy": "eval-arc-easy", "arc-challenge": "eval-arc-challenge",
         "piqa": "eval-piqa", "openbookqa": "eval-openbookqa"}


def write_compact(obj, path: Path) -> None:
    """The per-item result files without indentation: every item of every set stays well under 2 MB."""
    path.write_text(json.dumps(obj, separators=(",", ":")) + "\n")


def subset_files(tasks, indices: dict[str, list[int]], folder: Path) -> None:
    """The chosen items' original records (PIQA with its label merged in), in item order, plus the configs."""
    from llm_companion import fetch

    (folder / "utils.py").write_text("from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401\n")
    for task in tasks:
        lines = fetch(FILES[task]).read_text(encoding="utf-8").splitlines()
        labels = fetch("eval-piqa-labels").read_text().split("\n") if task == "piqa" else None
        out = []
        for i in indices[task]:
            rec = json.loads(lines[i])
            if labels is not None:
                rec["label"] = int(labels[i])
            out.append(json.dumps(rec))
        path = folder / f"{task}.jsonl"
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
        (folder / f"{TASKS[task]}.yaml").write_text(YAML.format(task=TASKS[task], path=path, **SPEC[task]))


def run_ours(model, tokenizer, tasks, limit, seed, cache):
    from llm_companion.evaluation import evaluate

    t0 = time.perf_counter()
    r = evaluate(model, tokenizer, tasks, limit=limit, seed=seed, name="SmolLM2-135M-Instruct (llm_companion)",
                 cache_dir=None if cache else False)
    return r, time.perf_counter() - t0


def hf_scorer(batch_size: int):
    """lm-eval's HF backend around transformers' own loading of the same GGUF (fp32)."""
    import transformers
    from lm_eval.models.huggingface import HFLM

    from llm_companion import fetch

    gguf = fetch("smollm2-135m-instruct")
    hf = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                           dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return HFLM(pretrained=hf, tokenizer=tok, batch_size=batch_size, device="cpu")


def run_lmeval(folder: Path, tasks, lm) -> dict:
    """lm-eval's per-item log-likelihoods and correctness on the item files written to ``folder``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = {}
    for task in tasks:
        t0 = time.perf_counter()
        res = lm_eval.simple_evaluate(model=lm, tasks=[TASKS[task]], task_manager=TaskManager(include_path=str(folder)),
                                      log_samples=True, verbosity="ERROR")
        seconds = time.perf_counter() - t0
        samples = sorted(res["samples"][TASKS[task]], key=lambda s: s["doc_id"])
        out[task] = {"seconds": seconds, "metrics": res["results"][TASKS[task]],
                     "items": [{"doc_id": s["doc_id"], "ll": [float(r[0][0]) for r in s["resps"]],
                                "acc": s["acc"], "acc_norm": s["acc_norm"], "gold": s["target"]} for s in samples]}
    return out


def chunk_order(task: str, seed: int, chunk: int) -> list[list[int]]:
    """The task's item indices in chunks that nest like ``--limit``: chunks 1..k are exactly the items
    ``select(…, k · chunk, seed)`` chooses, so a run stopped early has scored a seeded random subset."""
    from llm_companion.evaluation import load_task, select

    items = load_task(task)
    chunks, done = [], set()
    for k in range(1, -(-len(items) // chunk) + 1):
        new = [it.index for it in select(items, min(k * chunk, len(items)), seed, task) if it.index not in done]
        done.update(new)
        chunks.append(new)
    return chunks


def run_lmeval_chunked(tasks, seed: int, chunk: int, work: Path, lm, deadline: float | None = None,
                       max_chunks: int | None = None) -> dict:
    """lm-eval on every item, ``chunk`` items per call, each chunk's result kept in ``work`` so that a
    stopped run resumes where it was. Stops starting new chunks after ``deadline`` (``time.time()``)."""
    import hashlib

    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for task in tasks:
        items, seconds = [], 0.0
        chunks = chunk_order(task, seed, chunk)[:max_chunks]
        for k, idx in enumerate(chunks):
            key = hashlib.sha256(json.dumps(idx).encode()).hexdigest()[:10]
            path = work / f"{task}-{k:03d}-{key}.json"
            if not path.is_file():
                if deadline is not None and time.time() > deadline:
                    print(f"{task}: stopping at chunk {k + 1}/{len(chunks)} (deadline)", flush=True)
                    break
                with tempfile.TemporaryDirectory() as tmp:
                    subset_files([task], {task: sorted(idx)}, Path(tmp))
                    res = run_lmeval(Path(tmp), [task], lm)[task]
                for it, i in zip(res["items"], sorted(idx), strict=True):
                    it["index"] = i
                tmp_path = path.with_suffix(".tmp")
                tmp_path.write_text(json.dumps({"seconds": res["seconds"], "items": res["items"]}))
                tmp_path.replace(path)
                print(f"{task}: chunk {k + 1}/{len(chunks)} ({len(idx)} items) in {res['seconds']:.0f} s",
                      flush=True)
            got = json.loads(path.read_text())
            items += got["items"]
            seconds += got["seconds"]
        items.sort(key=lambda it: it["index"])
        out[task] = {"seconds": seconds, "complete": len(items) == sum(map(len, chunks)), "items": items}
    return out


def ll_differences(ours: dict, theirs: dict, cache_root: Path) -> dict:
    """Per task: the largest and median |log-likelihood difference| over every scored ending (nats), and
    the items whose endings differ by more than 1e-3 (a tokenization difference, not rounding)."""
    rep = {}
    for task, t in theirs.items():
        rows = {}
        path = cache_root / ours["fingerprint"] / f"{task}.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["key"].split("/")[0]] = row  # the key is "<index>/<hash of the text>" (no BLiMP here)
        diffs, odd = [], []
        for it in t["items"]:
            d = [abs(a - b) for a, b in zip(rows[str(it["index"])]["ll"], it["ll"], strict=True)]
            diffs += d
            if max(d) > 1e-3:
                odd.append({"index": it["index"], "max_diff": max(d)})
        diffs.sort()
        causes = tokenizer_causes(task, [o["index"] for o in odd])
        for o in odd:
            o["text_has"] = causes[o["index"]]
        rep[task] = {"endings": len(diffs), "max": diffs[-1], "median": diffs[len(diffs) // 2], "over_1e-3": odd,
                     "over_1e-3_explained": sum(bool(o["text_has"]) for o in odd)}
    return rep


# Where the two tokenizers are known to split the same text differently (SmolLM2's pre-tokenizer isolates
# numeric characters; transformers' GGUF tokenizer does not treat these alike)
FRACTION = re.compile("[\u00bc-\u00be\u2150-\u215e]")     # ¼ ½ ¾ and ⅐ … ⅞
SPACES_DIGIT = re.compile(r"\s{2,}\d")                       # a run of spaces before a digit


def tokenizer_causes(task: str, indices: list[int]) -> dict[int, list[str]]:
    """For each item, which known tokenizer-split patterns its context or endings contain (empty: none)."""
    from llm_companion.evaluation import load_task

    items = {it.index: it for it in load_task(task)}
    out = {}
    for i in indices:
        text = items[i].context + "\n".join(items[i].choices)
        out[i] = [name for name, rx in (("fraction", FRACTION), ("spaces before a digit", SPACES_DIGIT))
                  if rx.search(text)]
    return out


def agreement(ours: dict, theirs: dict) -> dict:
    """Per-item agreement of the predictions (acc and acc_norm) on the items lm-eval scored."""
    rep = {}
    for task, t in theirs.items():
        mine = {it["index"]: it for it in ours["tasks"][task]["items"]}
        pairs = [(mine[b["index"]], b) for b in t["items"]]
        n = len(pairs)
        if n == 0:
            continue
        same = sum((a["pred"] == a["gold"]) == bool(b["acc"]) for a, b in pairs)
        same_norm = sum((a["pred_norm"] == a["gold"]) == bool(b["acc_norm"]) for a, b in pairs)
        rep[task] = {"n": n, "of": len(mine), "complete": n == len(mine),
                     "acc_ours": sum(a["pred"] == a["gold"] for a, _ in pairs) / n,
                     "acc_lmeval": sum(b["acc"] for _, b in pairs) / n,
                     "acc_norm_ours": sum(a["pred_norm"] == a["gold"] for a, _ in pairs) / n,
                     "acc_norm_lmeval": sum(b["acc_norm"] for _, b in pairs) / n,
                     "agree_acc": same / n, "agree_acc_norm": same_norm / n,
                     "differ_acc": [{"index": a["index"], "right": "ours" if a["pred"] == a["gold"] else "lm-eval"}
                                    for a, b in pairs if (a["pred"] == a["gold"]) != bool(b["acc"])],
                     "differ_acc_norm": [{"index": a["index"],
                                          "right": "ours" if a["pred_norm"] == a["gold"] else "lm-eval"}
                                         for a, b in pairs if (a["pred_norm"] == a["gold"]) != bool(b["acc_norm"])],
                     "lmeval_seconds": t["seconds"]}
    return rep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=None, help="items per task (seeded choice); default every item")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--batch-size", type=int, default=4, help="lm-eval's batch size")
    p.add_argument("--chunk", type=int, default=500, help="items per lm-eval call on the full sets (each kept)")
    p.add_argument("--work", type=Path, default=None,
                   help="where lm-eval's finished chunks are kept (default data/bench-eval/<limit or full>)")
    p.add_argument("--hours", type=float, default=None, help="start no new lm-eval chunk after this long")
    p.add_argument("--skip-lmeval", action="store_true")
    p.add_argument("--speed-items", type=int, default=40, help="HellaSwag items timed without any cache")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from llm_companion import load_smollm2
    from llm_companion.data.download import data_dir
    from llm_companion.evaluation import evaluate, load_task, select
    from llm_companion.evaluation.harness import default_cache_dir
    from llm_companion.evaluation.report import markdown_table, write_json

    deadline = None if args.hours is None else time.time() + 3600 * args.hours
    tasks = args.tasks.split(",")
    tag = f"{args.limit}" if args.limit else "full"
    RESULTS.mkdir(exist_ok=True)
    model, tokenizer, info = load_smollm2()
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"] * 3
    print(f"model: {info.describe()}; torch {torch.__version__}, {args.threads} thread(s); "
          f"load average {' '.join(load)}", flush=True)
    ours, secs = run_ours(model, tokenizer, tasks, args.limit, args.seed, cache=True)
    write_compact(ours, RESULTS / f"eval_smollm2_{tag}_ours.json")
    print(markdown_table(ours), flush=True)
    if args.skip_lmeval:
        return 0
    lm = hf_scorer(args.batch_size)
    work = args.work or data_dir() / "bench-eval" / tag
    # with --limit: one chunk, exactly the items `select` chose for our run
    theirs = run_lmeval_chunked(tasks, args.seed, args.limit or args.chunk, work, lm, deadline,
                                max_chunks=1 if args.limit else None)
    speed = None
    if "hellaswag" in tasks and args.speed_items:
        # speed on other HellaSwag items, in this process, nothing cached: ours, then lm-eval
        items = select(load_task("hellaswag"), args.speed_items, args.seed + 1, "hellaswag")
        t0 = time.perf_counter()
        evaluate(model, tokenizer, "hellaswag", items={"hellaswag": items}, cache_dir=False)
        t_ours = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            subset_files(["hellaswag"], {"hellaswag": [it.index for it in items]}, Path(tmp))
            t_lm = run_lmeval(Path(tmp), ["hellaswag"], lm)["hellaswag"]["seconds"]
        speed = {"items": len(items), "ours_items_per_s": len(items) / t_ours,
                 "lmeval_items_per_s": len(items) / t_lm, "ratio": t_lm / t_ours}
    # every item of every set: compact, log-likelihoods to 1e-5 nats (the differences above use full precision)
    slim = {t: {**r, "items": [{**it, "ll": [round(x, 5) for x in it["ll"]]} for it in r["items"]]}
            for t, r in theirs.items()}
    write_compact({"tasks": slim}, RESULTS / f"eval_smollm2_{tag}_lmeval.json")
    agree = agreement(ours, theirs)
    diffs = ll_differences(ours, theirs, default_cache_dir())
    write_json({"limit": args.limit, "seed": args.seed, "agreement": agree, "ll_differences": diffs,
                "speed": speed}, RESULTS / f"eval_smollm2_{tag}_agreement.json")
    print("\n| task | scored by both | acc ours | acc lm-eval | acc_norm ours | acc_norm lm-eval | same acc "
          "| same acc_norm | max |Δll| | items with an ending |Δll| > 1e-3 (of them: ½ or spaces before a digit) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for task, a in agree.items():
        d = diffs[task]
        print(f"| {task} | {a['n']} of {a['of']} | {100 * a['acc_ours']:.1f} | {100 * a['acc_lmeval']:.1f} | "
              f"{100 * a['acc_norm_ours']:.1f} | {100 * a['acc_norm_lmeval']:.1f} | {100 * a['agree_acc']:.2f}% | "
              f"{100 * a['agree_acc_norm']:.2f}% | {d['max']:.2g} | "
              f"{len(d['over_1e-3'])} ({d['over_1e-3_explained']}) |")
    if speed:
        print(f"\nHellaSwag speed, {speed['items']} items, one process: ours {speed['ours_items_per_s']:.2f} items/s, "
              f"lm-eval {speed['lmeval_items_per_s']:.2f} items/s: {speed['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
