"""Reproduction benchmark for chapter 9: SmolLM2-135M-Instruct on HellaSwag, ARC-Easy, ARC-Challenge, PIQA and
OpenBookQA, scored by the book's ``llm_companion.evaluation`` and by EleutherAI's lm-evaluation-harness
(``lm-eval``, HF backend, transformers loading the same GGUF) on the same items, in one process.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/bench_eval.py --limit 200          # seeded subset per task
    .venv/bin/python benchmarks/bench_eval.py                      # every item (hours on 2 CPU cores)

Writes ``benchmarks/results/eval_smollm2_ours.json`` (the report card, every item's prediction),
``…_lmeval.json`` (lm-eval's per-item predictions) and ``…_agreement.json``; prints a Markdown summary.
Speed is the ratio of items/s of the two scorers on the same HellaSwag items in this process (the
shared-context path against lm-eval's one forward per request).
"""
from __future__ import annotations

import argparse
import json
import os
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


def run_lmeval(folder: Path, tasks, batch_size: int):
    import lm_eval
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from llm_companion import fetch

    gguf = fetch("smollm2-135m-instruct")
    hf = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                           dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    lm = HFLM(pretrained=hf, tokenizer=tok, batch_size=batch_size, device="cpu")
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


def agreement(ours: dict, theirs: dict) -> dict:
    """Per-item agreement of the predictions (acc and acc_norm) and the largest log-likelihood difference."""
    rep = {}
    for task, t in theirs.items():
        o = ours["tasks"][task]["items"]
        assert len(o) == len(t["items"]), (task, len(o), len(t["items"]))
        pairs = list(zip(o, t["items"], strict=True))
        same = sum((a["pred"] == a["gold"]) == bool(b["acc"]) for a, b in pairs)
        same_norm = sum((a["pred_norm"] == a["gold"]) == bool(b["acc_norm"]) for a, b in pairs)
        n = len(o)
        acc_l = sum(b["acc"] for b in t["items"]) / n
        accn_l = sum(b["acc_norm"] for b in t["items"]) / n
        rep[task] = {"n": n, "acc_ours": ours["tasks"][task]["acc"], "acc_lmeval": acc_l,
                     "acc_norm_ours": ours["tasks"][task]["acc_norm"], "acc_norm_lmeval": accn_l,
                     "agree_acc": same / n, "agree_acc_norm": same_norm / n}
    return rep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=None, help="items per task (seeded choice); default every item")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--batch-size", type=int, default=4, help="lm-eval's batch size")
    p.add_argument("--skip-lmeval", action="store_true")
    p.add_argument("--speed-items", type=int, default=40, help="HellaSwag items timed without any cache")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from llm_companion import load_smollm2
    from llm_companion.evaluation import evaluate, load_task, select
    from llm_companion.evaluation.report import markdown_table, write_json

    tasks = args.tasks.split(",")
    RESULTS.mkdir(exist_ok=True)
    model, tokenizer, info = load_smollm2()
    print(f"model: {info.describe()}; torch {torch.__version__}, {args.threads} thread(s); "
          "NOTE: the machine was shared with other jobs, so absolute times are inflated", flush=True)
    ours, secs = run_ours(model, tokenizer, tasks, args.limit, args.seed, cache=True)
    write_json(ours, RESULTS / "eval_smollm2_ours.json")
    print(markdown_table(ours), flush=True)
    if args.skip_lmeval:
        return 0
    indices = {t: [it.index for it in select(load_task(t), args.limit, args.seed, t)] for t in tasks}
    with tempfile.TemporaryDirectory() as tmp:
        subset_files(tasks, indices, Path(tmp))
        theirs = run_lmeval(Path(tmp), tasks, args.batch_size)
        # speed on the same HellaSwag items, in this process, nothing cached: ours, then lm-eval
        speed = None
        if "hellaswag" in tasks and args.speed_items:
            items = select(load_task("hellaswag"), args.speed_items, args.seed + 1, "hellaswag")
            sub = {"hellaswag": items}
            t0 = time.perf_counter()
            evaluate(model, tokenizer, "hellaswag", items=sub, cache_dir=False)
            t_ours = time.perf_counter() - t0
            sp = Path(tmp) / "speed"
            sp.mkdir()
            subset_files(["hellaswag"], {"hellaswag": [it.index for it in items]}, sp)
            t_lm = run_lmeval(sp, ["hellaswag"], args.batch_size)["hellaswag"]["seconds"]
            speed = {"items": len(items), "ours_items_per_s": len(items) / t_ours,
                     "lmeval_items_per_s": len(items) / t_lm, "ratio": t_lm / t_ours}
    for task in theirs:
        for it, idx in zip(theirs[task]["items"], indices[task], strict=True):
            it["index"] = idx
    write_json({"tasks": theirs}, RESULTS / "eval_smollm2_lmeval.json")
    agree = agreement(ours, theirs)
    write_json({"limit": args.limit, "seed": args.seed, "agreement": agree, "speed": speed},
               RESULTS / "eval_smollm2_agreement.json")
    print("\n| task | n | acc ours | acc lm-eval | acc_norm ours | acc_norm lm-eval | same acc | same acc_norm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for task, a in agree.items():
        print(f"| {task} | {a['n']} | {100 * a['acc_ours']:.1f} | {100 * a['acc_lmeval']:.1f} | "
              f"{100 * a['acc_norm_ours']:.1f} | {100 * a['acc_norm_lmeval']:.1f} | {100 * a['agree_acc']:.1f}% | "
              f"{100 * a['agree_acc_norm']:.1f}% |")
    if speed:
        print(f"\nHellaSwag speed, {speed['items']} items, one process: ours {speed['ours_items_per_s']:.2f} items/s, "
              f"lm-eval {speed['lmeval_items_per_s']:.2f} items/s: {speed['ratio']:.2f}x (shared machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
