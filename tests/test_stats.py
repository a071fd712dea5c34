"""Intervals against published values and by simulated coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from mesascope.detectors.probe_fit import score_rows
from mesascope.stats import Measurement, auroc_interval, diff_ci, wilson, worst_of

# Newcombe (1998), Stat Med 17:873-890, Table II: method 10 (hybrid score, no continuity correction).
NEWCOMBE_1998 = [((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)),
                 ((5, 56, 0, 29), (-0.0381, 0.1926)), ((0, 10, 0, 20), (-0.1611, 0.2775)),
                 ((10, 10, 0, 20), (0.6791, 1.0000))]


@pytest.mark.parametrize("counts, published", NEWCOMBE_1998)
def test_difference_of_rates_matches_newcombes_worked_examples(counts, published):
    a, n1, b, n2 = counts
    d = diff_ci(wilson(a, n1), wilson(b, n2))
    assert d.value == pytest.approx(a / n1 - b / n2)
    assert d.ci == pytest.approx(published, abs=5e-5)


def test_wilson_bounds_at_the_edges_are_exact():
    assert wilson(20, 20).ci[1] == 1.0 and wilson(0, 20).ci[0] == 0.0
    assert wilson(20, 20).ci[0] == pytest.approx(0.8389, abs=1e-4)  # Newcombe 1998 Table I, 20/20 (method 3)


def test_auroc_interval_does_not_collapse_at_a_perfect_separation():
    lo, hi = auroc_interval(1.0, 150, 150)
    assert hi == 1.0 and 0.97 < lo < 1.0  # a percentile bootstrap says [1, 1] here
    lo0, hi0 = auroc_interval(0.0, 150, 150)
    assert lo0 == 0.0 and 0.0 < hi0 < 0.03
    assert auroc_interval(1.0, 30, 30)[0] < lo  # fewer prompts, a wider interval
    mid = auroc_interval(0.5, 150, 150)
    assert mid[0] < 0.5 < mid[1] and mid[1] - 0.5 == pytest.approx(0.5 - mid[0], abs=1e-9)


def test_auroc_interval_covers_the_true_auroc_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for shift, n in ((1.0, 40), (2.5, 60), (0.3, 80)) * 100:
        true = norm.cdf(shift / np.sqrt(2))  # binormal: AUROC = Phi(d / sqrt(2))
        pos, neg = rng.normal(shift, 1, n), rng.normal(0, 1, n)
        auc = roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[pos, neg])
        lo, hi = auroc_interval(auc, n, n)
        hits += lo <= true <= hi
    assert 0.92 <= hits / 300 <= 0.99


def test_the_worst_set_interval_accounts_for_taking_the_minimum():
    rng = np.random.default_rng(1)
    pos = rng.normal(1.5, 1, 100)
    scores = {"test_pos": pos, "test_neg": rng.normal(0, 1, 100), "test_near_miss": rng.normal(0.2, 1, 100),
              "test_other_prefix": rng.normal(0.1, 1, 100)}
    row = score_rows(scores, 0, 0)
    per_set = [row[k] for k in ("auroc", "auroc_near_miss", "auroc_other_prefix")]
    worst = min(per_set, key=lambda m: m["value"])
    assert row["auroc_worst"]["value"] == worst["value"]
    # Wider than the chosen set's own 95% interval, and its lower bound is the lowest Bonferroni bound.
    assert row["auroc_worst"]["ci"][0] < worst["ci"][0]
    assert row["auroc_worst"]["ci"][1] <= max(m["ci"][1] for m in per_set)
    m = {k: Measurement(v, (v - 0.1, v + 0.1), 10) for k, v in {"a": 0.9, "b": 0.7}.items()}
    assert worst_of(m, {"a": (0.6, 0.95), "b": (0.5, 0.8)}).ci == (0.5, 0.8)


def _newcombe_quartic(auc: float, m: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Newcombe's (2006) method 5 solved as a polynomial, written independently of stats.py: with N = (m + n) / 2
    and his variance in the form theta (1 - theta) / (mn) [(2N - 1) - 3 (N - 1) / ((2 - theta)(1 + theta))],
    (auc - theta)^2 = z^2 V(theta) times mn (2 - theta)(1 + theta) is a quartic; its roots in [0, 1] bound the interval."""
    P = np.polynomial.Polynomial
    t, big_n = P([0, 1]), (m + n) / 2
    quartic = (m * n * (auc - t) ** 2 * (2 - t) * (1 + t)
               - z * z * t * (1 - t) * ((2 * big_n - 1) * (2 - t) * (1 + t) - 3 * (big_n - 1)))
    roots = [r.real for r in quartic.roots() if abs(r.imag) < 1e-9 and 0 <= r.real <= 1]
    # At auc = 1 (or 0) theta = auc is itself a root; the interval's other end is the next one.
    below, above = [r for r in roots if r < auc - 1e-9], [r for r in roots if r > auc + 1e-9]
    return (max(below) if below else 0.0), (min(above) if above else 1.0)


@pytest.mark.parametrize("auc, m, n", [(0.893, 45, 58), (0.75, 10, 10), (0.6, 30, 50), (0.98, 150, 150),
                                       (1.0, 150, 150), (0.0, 20, 35)])
def test_auroc_interval_is_newcombes_method_5(auc, m, n):
    lo, hi = auroc_interval(auc, m, n)
    assert (lo, hi) == pytest.approx(_newcombe_quartic(auc, m, n), abs=1e-6)


def test_the_worst_set_interval_covers_the_true_minimum_where_the_worst_sets_own_does_not():
    """Three clean sets, all at true AUROC 0.85, scored against the same triggered prompts: the lowest estimate is
    biased low, so the worst set's own 95% interval too often ends below 0.85; the Bonferroni interval does not."""
    rng = np.random.default_rng(0)
    true, n, reps = 0.85, 60, 400
    shift = np.sqrt(2) * norm.ppf(true)
    joint = own = 0
    key = {"clean": "auroc", "near_miss": "auroc_near_miss", "other_prefix": "auroc_other_prefix"}
    for _ in range(reps):
        scores = {"test_pos": rng.normal(shift, 1, n), **{k: rng.normal(0, 1, n) for k in
                                                         ("test_neg", "test_near_miss", "test_other_prefix")}}
        row = score_rows(scores, 0, 0)
        lo, hi = row["auroc_worst"]["ci"]
        joint += lo <= true <= hi
        lo, hi = row[key[row["worst_negatives"]]]["ci"]
        own += lo <= true <= hi
    assert joint / reps >= 0.95 > own / reps
