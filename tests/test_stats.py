"""The paired interval of chapters 8-10: Newcombe's method 10, never zero-width, consistent with exact McNemar."""
import math

import numpy as np
import pytest

from llm_companion.evaluation import mcnemar_exact, paired_interval, paired_test, wilson_interval
from llm_companion.evaluation.stats import _newcombe_limits


def test_newcombe_matches_the_published_worked_example():
    # Cavo et al. (2012) as worked in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency
    # Tables" (2017), ch. 8: both 59, first only 6, second only 16, neither 80; Newcombe -0.1186 to -0.0046
    lo, hi = _newcombe_limits(np.array([59]), 6, 16, 161, 1.959964)
    assert (round(float(lo[0]), 4), round(float(hi[0]), 4)) == (-0.1186, -0.0046)
    # exact McNemar gives p = 0.052 on 6 vs 16, so the reported interval reaches 0 instead of stopping short
    assert mcnemar_exact(6, 16) == pytest.approx(0.0525, abs=1e-4)
    lo, hi = paired_interval(6, 16, 161, both=59)
    assert round(lo, 4) == -0.1186 and hi == 0.0


def test_hand_derived_case_without_correlation_term():
    # both 2, A only 6, B only 0, neither 2 (n = 10): p_a = 0.8, p_b = 0.2; e*h - f*g = 4 <= n/2, so phi = 0
    # and the limits are the square-and-add of the Wilson limits of 8/10 (0.4902, 0.9433) and 2/10
    l1, u1 = wilson_interval(8, 10)
    l2, u2 = wilson_interval(2, 10)
    assert (round(l2, 4), round(u2, 4)) == (0.0567, 0.5098)
    lo, hi = paired_interval(6, 0, 10, both=2)
    assert lo == pytest.approx(0.6 - math.hypot(0.8 - l1, u2 - 0.2))   # 0.6 - 0.4381
    assert hi == pytest.approx(0.6 + math.hypot(0.2 - l2, u1 - 0.8))   # 0.6 + 0.2027
    assert (round(lo, 3), round(hi, 3)) == (0.162, 0.803)
    assert mcnemar_exact(6, 0) == pytest.approx(1 / 32)   # significant, so no widening


@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_never_zero_width(n):
    for f in range(n + 1):
        for g in range(n - f + 1):
            lo, hi = paired_interval(f, g, n)
            assert -1.0 <= lo < hi <= 1.0, (f, g, n)
            assert lo <= (f - g) / n <= hi
            e = (n - f - g) // 2
            lo_e, hi_e = paired_interval(f, g, n, both=e)
            assert lo_e < hi_e
            # without the concordant split the interval spans the one for any split
            assert lo <= lo_e + 1e-12 and hi_e <= hi + 1e-12


def test_no_disagreement_no_zero_interval():
    # the case that printed "[0, 0]" before: two models that agree on every item
    lo, hi = paired_interval(0, 0, 200)
    assert lo < 0 < hi and hi - lo > 0.01


GRID_N = (10, 20, 50, 100, 200, 500, 2000)


def _grid():
    for n in GRID_N:
        for f in range(min(n, 40) + 1):
            for g in range(min(n - f, 40) + 1):
                yield n, f, g


@pytest.mark.slow
def test_excludes_zero_exactly_when_exact_mcnemar_rejects():
    checked = 0
    for n, f, g in _grid():
        rejects = mcnemar_exact(f, g) < 0.05
        for both in (None, 0, (n - f - g) // 2, n - f - g):
            lo, hi = paired_interval(f, g, n, both=both)
            assert (lo > 0 or hi < 0) == rejects, (n, f, g, both)
            checked += 1
    assert checked > 20_000


@pytest.mark.slow
def test_where_newcombe_alone_would_disagree():
    """The tolerance the widening removes: Newcombe's own interval excludes 0 for some p in [0.05, 0.13)
    when few items are discordant (p < 0.08 once 20 or more are), and never misses a rejection."""
    liberal = []
    for n, f, g in _grid():
        e = np.array(sorted({0, (n - f - g) // 2, n - f - g}))
        lo, hi = _newcombe_limits(e, f, g, n, 1.959964)
        excludes = (lo > 0) | (hi < 0)
        p = mcnemar_exact(f, g)
        if p < 0.05:
            assert excludes.all(), (n, f, g)
        elif excludes.any():
            liberal.append((f + g, p))
    assert liberal and max(p for _, p in liberal) < 0.13
    assert max(p for m, p in liberal if m >= 20) < 0.08


def test_coverage_near_nominal():
    # seeded simulation: paired items with known accuracies; the interval must cover the true difference
    rng = np.random.default_rng(0)
    for n, p10, p01 in [(100, 0.06, 0.16), (200, 0.02, 0.02), (500, 0.10, 0.13), (1000, 0.01, 0.0)]:
        p11 = (1 - p10 - p01) / 2
        draws = rng.multinomial(n, [p11, p10, p01, 1 - p11 - p10 - p01], size=400)
        hits = 0
        for both, f, g, _ in draws:
            lo, hi = paired_interval(int(f), int(g), n, both=int(both))
            hits += lo - 1e-12 <= p10 - p01 <= hi + 1e-12
        assert hits / len(draws) >= 0.92, (n, p10, p01, hits)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="a_only"):
        paired_interval(6, 5, 10)
    with pytest.raises(ValueError, match="a_only"):
        paired_interval(-1, 0, 10)
    with pytest.raises(ValueError, match="both"):
        paired_interval(2, 2, 10, both=7)
    assert paired_interval(0, 0, 0) == (-1.0, 1.0)


def test_paired_test_reports_the_paired_interval():
    a = {"items": [{"index": i, "pred": int(i % 3 != 0), "gold": 1} for i in range(60)]}
    b = {"items": [{"index": i, "pred": int(i % 4 != 0), "gold": 1} for i in range(60)]}
    r = paired_test(a, b)
    assert r["a_only"] + r["b_only"] + r["both"] <= r["n"] == 60
    assert r["ci95"] == list(paired_interval(r["a_only"], r["b_only"], 60, both=r["both"]))
    assert r["ci95"][0] < r["diff"] < r["ci95"][1]


def test_paired_test_compares_the_metric_it_is_asked_for():
    a = {"items": [{"index": i, "pred": 0, "pred_norm": int(i < 30), "gold": 1} for i in range(40)]}
    b = {"items": [{"index": i, "pred": int(i < 10), "pred_norm": 0, "gold": 1} for i in range(40)]}
    acc, norm = paired_test(a, b), paired_test(a, b, metric="acc_norm")
    assert (acc["metric"], acc["a_only"], acc["b_only"]) == ("acc", 0, 10)
    assert (norm["metric"], norm["a_only"], norm["b_only"]) == ("acc_norm", 30, 0)
    assert acc["ci95"][1] < 0 < norm["ci95"][0]
    with pytest.raises(ValueError, match="acc_norm"):
        paired_test({"items": [{"index": 0, "pred": 1, "gold": 1}]}, a, metric="acc_norm")
    with pytest.raises(ValueError, match="metric"):
        paired_test(a, b, metric="f1")
