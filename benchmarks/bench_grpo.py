"""GRPO training speed (seconds per step, completions/s): ours against TRL's ``GRPOTrainer`` with ``peft`` LoRA.

Same model (SmolLM2-135M-Instruct from the same GGUF, dequantized to fp32, in both), same prompts (the first
``--prompts`` training problems of chapter 11's task, in SmolLM2's chat template), same verifier reward (right,
and ended within the token budget), group size, prompts per step, completion length, temperature, learning rate,
LoRA (rank, alpha, layers), β = 0, token-level loss (TRL's default ``loss_type="dapo"``; ours ``level="token"``)
and number of steps.

* ours: ``llm_companion.rl.trainer.train_grpo``: one prefill per prompt shared by its group, the group decoded as
  a batch with the KV cache, LoRA adapters on our Llama;
* TRL: ``GRPOTrainer`` with a ``peft`` config, sampling with ``transformers``' ``generate`` (no vLLM on a CPU).

Each run is timed from the loaded base model to the trained adapter: ours from ``apply_lora``, TRL's from
building the ``GRPOTrainer`` to the end of ``train()``. The runs take turns, in an order that reverses every
round, so background load slows all alike; the table gives medians and the ratio. Completions/s counts the
sampled completions (steps × prompts per step × group size). Sampling is random, so the two implementations
draw different completions of different lengths; the table prints the mean completion length of each.

The full run (defaults: 8 steps × 2 prompts × group 8, 32 tokens, 2 rounds) takes about 10-15 minutes on two
idle cores; ``--steps 1 --rounds 1`` is a smoke test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch

TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=16, help="training prompts (default 16)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run (default 8)")
    p.add_argument("--per-step", type=int, default=2, help="prompts per step (default 2)")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest completion (default 32)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per implementation (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from datasets import Dataset  # benchmark-only dependencies (the test extra)
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from llm_companion import apply_lora, load_smollm2
    from llm_companion.rl.baselines import prompt_ids, verifier_reward
    from llm_companion.rl.tasks import TWO_DIGIT_SUMS, verify
    from llm_companion.rl.trainer import GRPOConfig, train_grpo

    _, tok, info = load_smollm2()
    problems = TWO_DIGIT_SUMS.splits.train[:args.prompts]
    ids = prompt_ids(tok, problems)
    rows = [{"prompt": tok.decode(x), "answer": pr.answer} for x, pr in zip(ids, problems)]
    hf_tok = AutoTokenizer.from_pretrained(info.path.parent, gguf_file=info.path.name)
    lr, temperature = 1e-3, 0.7
    lengths: dict[str, list[float]] = {"ours": [], "trl": []}

    def run_ours() -> float:
        model, _, _ = load_smollm2()
        t0 = time.perf_counter()
        apply_lora(model, rank=args.rank, alpha=2 * args.rank, targets=TARGETS)
        cfg = GRPOConfig(steps=args.steps, prompts_per_step=args.per_step, group_size=args.group,
                         max_new_tokens=args.max_new_tokens, temperature=temperature, lr=lr, level="token",
                         track_kl=False, max_grad_norm=1.0)
        hist = train_grpo(model, ids, verifier_reward(tok, problems), cfg, eos_id=tok.eos_token_id)
        lengths["ours"] += hist.column("length")
        return time.perf_counter() - t0

    def reward(prompts, completions, answer, completion_ids, **_):   # right, and ended within the budget (ours)
        return [1.0 if verify(c, a) and ids and ids[-1] == tok.eos_token_id else 0.0
                for c, a, ids in zip(completions, answer, completion_ids)]

    def run_trl() -> float:
        model = AutoModelForCausalLM.from_pretrained(info.path.parent, gguf_file=info.path.name,
                                                     dtype=torch.float32)
        model.is_quantized, model.hf_quantizer = False, None   # dequantized on load (see bench_dpo.py)
        with tempfile.TemporaryDirectory() as out:
            cfg = TRLConfig(output_dir=out, per_device_train_batch_size=args.per_step * args.group,
                            num_generations=args.group, steps_per_generation=1, max_steps=args.steps,
                            max_completion_length=args.max_new_tokens, temperature=temperature, learning_rate=lr,
                            beta=0.0, loss_type="dapo", lr_scheduler_type="constant", warmup_steps=0,
                            weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, report_to="none",
                            save_strategy="no", use_cpu=True, disable_tqdm=True, seed=123,
                            dataloader_num_workers=0, bf16=False)
            peft_cfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                  target_modules=HF_TARGETS, task_type="CAUSAL_LM")
            t0 = time.perf_counter()
            trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=Dataset.from_list(rows),
                                  processing_class=hf_tok, peft_config=peft_cfg)
            trainer.train()
            lengths["trl"] += [h["completions/mean_length"] for h in trainer.state.log_history
                               if "completions/mean_length" in h]
            return time.perf_counter() - t0

    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"] * 3
    print(f"{info.describe()}; fp32, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.steps} steps × {args.per_step} prompts × group {args.group}, ≤ {args.max_new_tokens} tokens, "
          f"LoRA rank {args.rank} on every block's linear layers; load average {' '.join(load)} "
          f"(on a SHARED machine read the ratio, not the absolute numbers)", flush=True)
    runs = {"ours": run_ours, "trl": run_trl}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            t = runs[name]()
            times[name].append(t)
            print(f"  {name}: {t:.1f} s", flush=True)
    n = args.steps * args.per_step * args.group
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'':8}{'seconds':>10}{'s/step':>9}{'compl./s':>10}{'mean len':>10}{'TRL / it':>10}")
    for k in runs:
        mean_len = statistics.mean(lengths[k]) if lengths[k] else float("nan")
        print(f"{k:8}{med[k]:10.1f}{med[k] / args.steps:9.2f}{n / med[k]:10.2f}{mean_len:10.1f}"
              f"{med['trl'] / med[k]:9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
