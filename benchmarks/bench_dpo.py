"""DPO training speed (preference pairs/s): ours against TRL's ``DPOTrainer`` with ``peft`` LoRA, one process.

Same model (SmolLM2-135M-Instruct from the same GGUF, dequantized to fp32, in both), same pairs (the
first ``--pairs`` of the preference set's training split, prompt in SmolLM2's chat template), same batch,
LoRA (rank, alpha, q and v projections of every block), β, learning rate and number of steps.

* ours: ``llm_companion.finetune.dpo``: the reference log-probs computed once with the adapters switched off
  (counted in our time), then ``train_dpo``;
* TRL: ``DPOTrainer`` with a ``peft`` config and its default ``precompute_ref_log_probs=False``, so the
  reference (the same network with adapters off) runs again in every step;
* TRL with ``precompute_ref_log_probs=True``: its own reference cache, computed when the trainer is built.

Both train in fp32. (``DPOConfig`` defaults to ``bf16=True``, bf16 autocast even on a CPU that emulates it: on
the AVX2 code paths one TRL run took 373 s against our 17 s; ``benchmarks/README.md`` records it.)

Each run is timed from the loaded base model to the trained adapter: ours from ``apply_lora`` (the pairs
tokenized, the reference cached, the steps), TRL's from building the ``DPOTrainer`` (tokenizing, wrapping
with ``peft``, precomputing if asked) to the end of ``train()``. The runs take turns, in an order that
reverses every round, so background load slows all alike; the table gives medians and the ratios. Pairs/s
counts the training pairs of the run (steps × batch).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=16, help="training pairs (default 16)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run (default 8)")
    p.add_argument("--batch", type=int, default=4, help="pairs per step (default 4)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--max-response", type=int, default=48, help="answer tokens kept (default 48)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per implementation (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from datasets import Dataset  # benchmark-only dependencies (the test extra)
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from llm_companion import apply_lora, load_smollm2
    from llm_companion.finetune.dpo import (
        encode_pairs,
        load_preference_data,
        reference_logprobs,
        split_preferences,
        train_dpo,
    )

    _, tok, info = load_smollm2()
    records = split_preferences(load_preference_data()).train[:args.pairs]
    pairs = encode_pairs(records, tok, max_response=args.max_response)
    # TRL gets the very same token sequences as text: prompt (chat template) and answers (it appends <|im_end|>)
    rows = [{"prompt": tok.decode(pr.prompt), "chosen": tok.decode(pr.chosen[:-1]),
             "rejected": tok.decode(pr.rejected[:-1])} for pr in pairs]
    hf_tok = AutoTokenizer.from_pretrained(info.path.parent, gguf_file=info.path.name)
    n_ours = sum(len(x.prompt) * 2 + len(x.chosen) + len(x.rejected) for x in pairs)
    lr, beta = 5e-4, 0.1

    def run_ours() -> float:
        model, _, _ = load_smollm2()
        t0 = time.perf_counter()
        apply_lora(model, rank=args.rank, alpha=2 * args.rank, targets=["q", "v"])
        pairs = encode_pairs(records, tok, max_response=args.max_response)
        ref = reference_logprobs(model, pairs, batch_size=args.batch)
        train_dpo(model, pairs, beta=beta, steps=args.steps, lr=lr, batch_size=args.batch, reference=ref)
        return time.perf_counter() - t0

    def run_trl(precompute: bool = False) -> float:
        model = AutoModelForCausalLM.from_pretrained(info.path.parent, gguf_file=info.path.name,
                                                     dtype=torch.float32)
        # the GGUF weights are dequantized to fp32 on load; the flag only records the file's format, but the
        # Trainer refuses to train a model carrying it
        model.is_quantized, model.hf_quantizer = False, None
        with tempfile.TemporaryDirectory() as out:
            cfg = DPOConfig(output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.steps,
                            learning_rate=lr, beta=beta, lr_scheduler_type="constant", warmup_steps=0,
                            weight_decay=0.0, logging_steps=args.steps, report_to="none", save_strategy="no",
                            use_cpu=True, disable_tqdm=True, seed=123, dataloader_num_workers=0,
                            precompute_ref_log_probs=precompute, bf16=False)
            peft_cfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                  target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
            t0 = time.perf_counter()
            trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows),
                                 processing_class=hf_tok, peft_config=peft_cfg)
            first = trainer.train_dataset[0]
            run_trl.tokens = sum(len(trainer.train_dataset[i]["prompt_ids"]) * 2
                                 + len(trainer.train_dataset[i]["chosen_ids"])
                                 + len(trainer.train_dataset[i]["rejected_ids"]) for i in range(len(rows)))
            assert "prompt_ids" in first
            trainer.train()
            return time.perf_counter() - t0

    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"] * 3
    print(f"{info.describe()}; fp32, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.steps} steps × {args.batch} pairs, LoRA rank {args.rank} on q,v of every block; "
          f"load average {' '.join(load)} (a SHARED machine: read the ratio, not the absolute numbers)",
          flush=True)
    runs = {"ours": run_ours, "trl": run_trl, "trl-precompute": lambda: run_trl(precompute=True)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            t = runs[name]()
            times[name].append(t)
            print(f"  {name}: {t:.1f} s", flush=True)
    n = args.steps * args.batch
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\ntokens per pass over the {len(pairs)} pairs (prompt counted for both answers): "
          f"ours {n_ours}, TRL {getattr(run_trl, 'tokens', '?')}")
    print(f"{'':16}{'seconds':>10}{'pairs/s':>10}{'ours / it':>11}")
    for k in runs:
        print(f"{k:16}{med[k]:10.1f}{n / med[k]:10.2f}{med[k] / med['ours']:10.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
