"""How sure a measured number is: Wilson intervals, a paired test for two models on the same items, and a
bootstrap interval of a mean (chapter 10's per-example differences)."""
from __future__ import annotations

import math

import torch


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (95% by default).

    Unlike the normal approximation p ± z·√(p(1-p)/n) it stays inside [0, 1] and is honest for small n
    or p near 0 or 1.
    """
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant items form a Binomial(a_only + b_only, 1/2)."""
    m = a_only + b_only
    if m == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m
    return min(1.0, 2 * tail)


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


def paired_test(a: dict, b: dict, task: str | None = None) -> dict:
    """Compare two models' results on the items both scored: accuracy difference (a − b), its 95%
    interval, and the exact McNemar p-value.

    ``a`` and ``b`` are :func:`evaluate` results (give ``task`` when they hold several) or one task's dict.
    The interval is the paired (Wald) one on the difference of proportions; the test uses only the items
    the two models disagree on, which is why a paired comparison sees differences two separate intervals
    would hide.
    """
    ta, tb = _task_of(a, task), _task_of(b, task)
    right_a = {_key(it): it["pred"] == it["gold"] for it in ta["items"]}
    right_b = {_key(it): it["pred"] == it["gold"] for it in tb["items"]}
    common = sorted(right_a.keys() & right_b.keys())
    n = len(common)
    if n == 0:
        raise ValueError("the two results share no items; score both models on the same items (same --seed)")
    a_only = sum(right_a[k] and not right_b[k] for k in common)
    b_only = sum(right_b[k] and not right_a[k] for k in common)
    diff = (a_only - b_only) / n
    var = ((a_only + b_only) / n - diff * diff) / n
    half = 1.959964 * math.sqrt(max(var, 0.0))
    return {"n": n, "acc_a": sum(right_a[k] for k in common) / n, "acc_b": sum(right_b[k] for k in common) / n,
            "diff": diff, "ci95": [diff - half, diff + half], "a_only": a_only, "b_only": b_only,
            "p_value": mcnemar_exact(a_only, b_only)}


def bootstrap_ci(values, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-example paired differences)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    g = torch.Generator().manual_seed(seed)
    means = v[torch.randint(0, v.numel(), (n_boot, v.numel()), generator=g)].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)
