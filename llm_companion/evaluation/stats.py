"""How sure a measured number is: Wilson intervals, a paired test for two models on the same items (exact
McNemar with Newcombe's interval of the difference), and a bootstrap interval of a mean (chapter 10's
per-example differences)."""
from __future__ import annotations

import math

import numpy as np
import torch


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (95% by default).

    Unlike the normal approximation p ± z·√(p(1-p)/n) it stays inside [0, 1] and is honest for small n
    or p near 0 or 1.
    """
    if n <= 0:
        return (0.0, 1.0)
    lo, hi = _wilson_np(correct, n, z)
    return (float(lo), float(hi))


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant items form a Binomial(a_only + b_only, 1/2)."""
    m = a_only + b_only
    if m == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def _newcombe_limits(both, a_only: int, b_only: int, n: int, z: float):
    """Newcombe (1998) method 10 for every concordant split in ``both`` (a NumPy array of "both right"
    counts): Wilson limits of the two marginal proportions combined with the phi-corrected correlation."""
    e, f, g = both.astype(np.float64), float(a_only), float(b_only)
    h = n - f - g - e
    p1, p2 = (e + f) / n, (e + g) / n
    lo1, hi1 = _wilson_np(e + f, n, z)
    lo2, hi2 = _wilson_np(e + g, n, z)
    margins = (e + f) * (g + h) * (e + g) * (f + h)
    cross = e * h - f * g
    # Newcombe's correction: a positive association is shrunk by n/2 (to 0, not below); a negative one is not
    num = np.where(cross > n / 2, cross - n / 2, np.where(cross < 0, cross, 0.0))
    phi = np.divide(num, np.sqrt(margins), out=np.zeros_like(num), where=margins > 0)
    d = p1 - p2
    down = np.sqrt(np.maximum((p1 - lo1) ** 2 - 2 * phi * (p1 - lo1) * (hi2 - p2) + (hi2 - p2) ** 2, 0.0))
    up = np.sqrt(np.maximum((p2 - lo2) ** 2 - 2 * phi * (p2 - lo2) * (hi1 - p1) + (hi1 - p1) ** 2, 0.0))
    return d - down, d + up


def _wilson_np(k, n: int, z: float):
    """Wilson limits of ``k / n`` for a number or a NumPy array of counts ``k``."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return np.maximum(0.0, centre - half), np.minimum(1.0, centre + half)


def paired_interval(a_only: int, b_only: int, n: int, z: float = 1.959964, *,
                    both: int | None = None) -> tuple[float, float]:
    """Interval of the paired difference of accuracies p_a − p_b = (a_only − b_only) / n (95% by default).

    ``a_only`` items only model A got right, ``b_only`` only B, ``n`` items in all; ``both`` (items both got
    right) when known. Newcombe's method 10 (Stat. Med. 1998, 17:2635): Wilson limits of the two accuracies,
    combined with their phi-corrected correlation. It is never zero-width for n > 0. Without ``both`` it
    spans every possible split of the concordant items, so it holds whichever split it was. It agrees with
    :func:`mcnemar_exact`: where that exact test does not reject at the level of ``z``, the interval is
    widened to reach 0 (Newcombe's alone can exclude 0 for p up to ~0.13 when few items are discordant). The
    converse, a rejection with 0 inside, cannot be repaired by widening; it does not occur on the grid of
    tests/test_stats.py (n up to 2,000, up to 40 discordant items each way).
    """
    m = a_only + b_only
    if min(a_only, b_only) < 0 or m > n:
        raise ValueError(f"need 0 <= a_only, b_only and a_only + b_only <= n; got {a_only}, {b_only}, n={n}")
    if both is not None and not 0 <= both <= n - m:
        raise ValueError(f"both must lie in [0, n - a_only - b_only] = [0, {n - m}]; got {both}")
    if n == 0:
        return (-1.0, 1.0)
    splits = np.arange(n - m + 1) if both is None else np.array([both])
    lo, hi = _newcombe_limits(splits, a_only, b_only, n, z)
    lo, hi = float(lo.min()), float(hi.max())
    if mcnemar_exact(a_only, b_only) >= math.erfc(z / math.sqrt(2)):  # not significant at this level
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return (max(-1.0, lo), min(1.0, hi))


def _task_of(result: dict, task: str | None) -> dict:
    if "tasks" in result:
        if task is None:
            if len(result["tasks"]) != 1:
                raise ValueError(f"name the task to compare; these results hold {', '.join(result['tasks'])}")
            task = next(iter(result["tasks"]))
        if task not in result["tasks"]:
            raise ValueError(f"task {task!r} is not in the results of {result.get('model', 'a model')}")
        return result["tasks"][task]
    return result


def _key(item: dict) -> tuple:
    return (item.get("paradigm", ""), item["index"])


def paired_test(a: dict, b: dict, task: str | None = None, metric: str = "acc") -> dict:
    """Compare two models' results on the items both scored: accuracy difference (a − b), its 95%
    interval, and the exact McNemar p-value.

    ``a`` and ``b`` are :func:`evaluate` results (give ``task`` when they hold several) or one task's dict;
    ``metric`` is ``"acc"`` or ``"acc_norm"`` (the prediction after length normalisation). The interval is
    :func:`paired_interval` (Newcombe's, consistent with the test); the test uses only the items the two
    models disagree on, which is why a paired comparison sees differences two separate intervals would hide.
    """
    pred = {"acc": "pred", "acc_norm": "pred_norm"}.get(metric)
    if pred is None:
        raise ValueError(f"metric must be 'acc' or 'acc_norm', got {metric!r}")
    ta, tb = _task_of(a, task), _task_of(b, task)
    if any(pred not in it for it in ta["items"] + tb["items"]):
        raise ValueError(f"these results have no {metric} predictions (BLiMP and LAMBADA have acc only)")
    right_a = {_key(it): it[pred] == it["gold"] for it in ta["items"]}
    right_b = {_key(it): it[pred] == it["gold"] for it in tb["items"]}
    common = sorted(right_a.keys() & right_b.keys())
    n = len(common)
    if n == 0:
        raise ValueError("the two results share no items; score both models on the same items (same --seed)")
    a_only = sum(right_a[k] and not right_b[k] for k in common)
    b_only = sum(right_b[k] and not right_a[k] for k in common)
    both = sum(right_a[k] and right_b[k] for k in common)
    return {"n": n, "acc_a": sum(right_a[k] for k in common) / n, "acc_b": sum(right_b[k] for k in common) / n,
            "diff": (a_only - b_only) / n, "ci95": list(paired_interval(a_only, b_only, n, both=both)),
            "a_only": a_only, "b_only": b_only, "both": both, "p_value": mcnemar_exact(a_only, b_only),
            "metric": metric}


def bootstrap_ci(values, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-example paired differences)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    g = torch.Generator().manual_seed(seed)
    means = v[torch.randint(0, v.numel(), (n_boot, v.numel()), generator=g)].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)
