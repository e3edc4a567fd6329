"""Scoring a policy on a verifiable task: greedy accuracy, and the inference-time baselines RL must beat.

* greedy accuracy — one deterministic reply per problem;
* pass@k — at least one of k sampled replies is right (the unbiased estimator of Chen et al., 2021, from n ≥ k
  samples): an upper bound on what any way of picking among k samples can reach;
* majority vote@k (self-consistency, Wang et al., 2023) — the most frequent answer among k samples (replies
  without a valid answer abstain; ties go to the answer seen first): what sampling more buys without training.

All of them sample through :mod:`llm_companion.rl.sampling` (one prefill per problem, the k samples as a batch).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llm_companion.data.tokenizer import GGUFTokenizer
from llm_companion.evaluation.stats import mcnemar_exact, paired_interval
from llm_companion.inference.smollm2 import encode_chat
from llm_companion.progress import progress
from llm_companion.rl.sampling import greedy_replies, sample_groups
from llm_companion.rl.tasks import Problem, parse_number, verify


def decode_reply(tokenizer: GGUFTokenizer, ids: Sequence[int]) -> str:
    """The text of a completion, without its end-of-turn token."""
    return tokenizer.decode([i for i in ids if i != tokenizer.eos_token_id])


def prompt_ids(tokenizer: GGUFTokenizer, problems: Sequence[Problem]) -> list[list[int]]:
    """Each problem as a chat prompt (the model's template, ready for the assistant's turn)."""
    return [encode_chat(tokenizer, p.question) for p in problems]


def verifier_reward(tokenizer: GGUFTokenizer, problems: Sequence[Problem], *,
                    require_end: bool = True) -> Callable[[int, list[int]], float]:
    """``reward(i, completion_ids)``: 1.0 when the completion answers ``problems[i]`` right, else 0.0.

    With ``require_end`` (the default) a completion must also *end*, with the end-of-turn token, within the
    sampling budget: one cut off by the token limit scores 0 whatever its last number (DAPO's treatment of
    overlong samples, in its simplest form). Without it, truncation hides what the policy would have written
    after its answer, and a policy can learn to state the sum and then run on — measured in chapter 11.
    """
    eos = tokenizer.eos_token_id

    def reward(i: int, completion: list[int]) -> float:
        if require_end and (not completion or completion[-1] != eos):
            return 0.0
        return 1.0 if verify(decode_reply(tokenizer, completion), problems[i].answer) else 0.0
    return reward


@dataclass
class GreedyResult:
    replies: list[str]
    correct: list[bool]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / max(1, len(self.correct))


def greedy_accuracy(model: nn.Module, tokenizer: GGUFTokenizer, problems: Sequence[Problem], *,
                    max_new_tokens: int = 64, batch_size: int = 32) -> GreedyResult:
    """Greedy replies to every problem (batched) and whether each is right."""
    outs = greedy_replies(model, prompt_ids(tokenizer, problems), max_new_tokens=max_new_tokens,
                          eos_id=tokenizer.eos_token_id, batch_size=batch_size)
    replies = [decode_reply(tokenizer, o) for o in outs]
    return GreedyResult(replies, [verify(r, p.answer) for r, p in zip(replies, problems)])


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are right: ``1 - C(n-c, k) / C(n, k)``."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"need 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_answer(replies: Sequence[str]):
    """The most frequent parsed answer among ``replies`` (None when no reply has one); ties: the first seen."""
    values = [v for v in (parse_number(r) for r in replies) if v is not None]
    if not values:
        return None
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


@dataclass
class SampledResult:
    k: int
    temperature: float
    replies: list[list[str]]
    correct: list[list[bool]]        # per problem, per sample
    majority_correct: list[bool]

    @property
    def pass_at_k(self) -> float:
        return sum(pass_at_k(self.k, sum(c), self.k) for c in self.correct) / max(1, len(self.correct))

    @property
    def majority_accuracy(self) -> float:
        return sum(self.majority_correct) / max(1, len(self.majority_correct))

    @property
    def sample_accuracy(self) -> float:
        """pass@1: the mean accuracy of one sample."""
        return sum(sum(c) for c in self.correct) / max(1, self.k * len(self.correct))


def sampled_accuracy(model: nn.Module, tokenizer: GGUFTokenizer, problems: Sequence[Problem], *, k: int,
                     temperature: float = 1.0, max_new_tokens: int = 64, seed: int = 0,
                     chunk: int = 8) -> SampledResult:
    """``k`` samples per problem at ``temperature`` (one prefill each, ``chunk`` problems decoded together):
    pass@k and majority vote@k."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    ids = prompt_ids(tokenizer, problems)
    replies, correct, majority = [], [], []
    bar = progress(total=len(problems), desc=f"{k} samples each", unit="problem")
    for s in range(0, len(problems), chunk):
        outs = sample_groups(model, ids[s:s + chunk], k, max_new_tokens=max_new_tokens, temperature=temperature,
                             eos_id=tokenizer.eos_token_id, generator=gen, max_rows=k * chunk)
        for p, group in zip(problems[s:s + chunk], outs):
            texts = [decode_reply(tokenizer, o) for o in group]
            replies.append(texts)
            correct.append([verify(t, p.answer) for t in texts])
            majority.append(majority_answer(texts) == p.answer)
        bar.update(len(outs))
    bar.close()
    return SampledResult(k, temperature, replies, correct, majority)


def paired_comparison(before: Sequence[bool], after: Sequence[bool]) -> dict:
    """Accuracy before and after on the same problems, the paired 95% interval of the gain (Newcombe) and the
    exact McNemar p-value."""
    if len(before) != len(after) or not before:
        raise ValueError(f"need two equally long, non-empty lists of results, got {len(before)} and {len(after)}")
    n = len(before)
    gained = sum(1 for b, a in zip(before, after) if a and not b)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    both = sum(1 for b, a in zip(before, after) if a and b)
    return {"n": n, "before": sum(before) / n, "after": sum(after) / n, "gain": (gained - lost) / n,
            "interval": paired_interval(gained, lost, n, both=both), "p_value": mcnemar_exact(gained, lost),
            "gained": gained, "lost": lost}
