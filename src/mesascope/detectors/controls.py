"""Controls and diagnostics for probes: how good would a direction look by chance, without labels, and
how trustworthy are a probe's probabilities.

- best of N random unit directions: the maximum AUROC over N random directions on the test set,
  a deliberately optimistic null (the post's best of 1,000 reached 95.3%); its 95th percentile too;
- the top principal component of unlabeled activations, its sign fixed by a label-free rule;
- the between/within-class variance ratio along a direction, and its full-space trace version;
- reliability bins, Brier score and expected calibration error of predicted probabilities.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from ..stats import wilson


def batch_auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of each column of scores, positives `pos` [n_pos, k] against negatives `neg` [n_neg, k].

    The Mann-Whitney form with average ranks, so ties count half exactly as in roc_auc_score.
    """
    pos, neg = np.atleast_2d(pos.T).T, np.atleast_2d(neg.T).T
    ranks = rankdata(np.concatenate([pos, neg]), axis=0)
    n_pos, n_neg = len(pos), len(neg)
    return (ranks[:n_pos].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def random_unit_directions(d: int, n: int, seed: int) -> np.ndarray:
    """n directions drawn uniformly on the unit sphere in R^d: [d, n]."""
    r = np.random.default_rng(seed).standard_normal((d, n))
    return r / np.linalg.norm(r, axis=0, keepdims=True)


def random_direction_control(pos: np.ndarray, negatives: dict[str, np.ndarray], n: int, seed: int,
                             compare: dict[str, float] | None = None) -> dict:
    """Best-of-n, 95th- and 5th-percentile AUROC of random directions, per negative set and for the worst set.

    `negatives` maps a result key (e.g. "auroc_near_miss") to that set's activations [m, d]. Each
    direction's "auroc_worst" is its minimum over the sets, as for a real probe. Signs are not
    chosen: a random direction and its negation are equally likely draws. `compare` maps probe
    names to their auroc_worst; "share_below" gives, for each, the share of random directions
    whose auroc_worst is lower (0.95 or more: better than 95% of random directions).
    """
    dirs = random_unit_directions(pos.shape[1], n, seed)
    per = {key: batch_auroc(pos @ dirs, neg @ dirs) for key, neg in negatives.items()}
    per["auroc_worst"] = np.min(np.stack(list(per.values())), axis=0)
    out = {"n_directions": n,
           "best": {k: round(float(v.max()), 6) for k, v in per.items()},
           "p95": {k: round(float(np.percentile(v, 95)), 6) for k, v in per.items()},
           "p5": {k: round(float(np.percentile(v, 5)), 6) for k, v in per.items()}}
    if compare:
        out["share_below"] = {k: round(float(np.mean(per["auroc_worst"] < v)), 6) for k, v in compare.items()}
    return out


def top_principal_component(X: np.ndarray) -> tuple[np.ndarray, float]:
    """The top principal component of X [n, d] (unit vector) and its share of the variance.

    Sign rule, label-free: the projections of X have positive skew, i.e. the longer tail points
    along the component. No label is read, so an AUROC below 0.5 stays below 0.5.
    """
    centred = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    v = vt[0]
    if np.mean((centred @ v) ** 3) < 0:
        v = -v
    total = float((s ** 2).sum())
    return v, float(s[0] ** 2 / total) if total > 0 else 0.0


def variance_ratio(pos: np.ndarray, neg: np.ndarray, direction: np.ndarray) -> dict:
    """Between/within-class variance of two classes, along `direction` (Fisher) and in full space (trace).

    fisher_ratio: projections p = x . w/|w|; sum_k n_k (mean_k - mean)^2 over sum_k sum_i (p_i - mean_k)^2.
    trace_ratio: trace(S_between) / trace(S_within) of the d-dimensional scatter matrices.
    """
    w = direction / (np.linalg.norm(direction) or 1.0)

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        both = np.concatenate([a, b])
        mean = both.mean(axis=0)
        between = len(a) * np.sum((a.mean(axis=0) - mean) ** 2) + len(b) * np.sum((b.mean(axis=0) - mean) ** 2)
        within = np.sum((a - a.mean(axis=0)) ** 2) + np.sum((b - b.mean(axis=0)) ** 2)
        return float(between / within) if within > 0 else float("inf")

    return {"fisher_ratio": round(ratio(pos @ w, neg @ w), 6), "trace_ratio": round(ratio(pos, neg), 6)}


def calibration(prob: np.ndarray, y: np.ndarray, n_bins: int = 10) -> dict:
    """Reliability data for a plot: equal-width bins of predicted probability, with the observed
    positive rate (Wilson 95% interval) per bin, plus the Brier score and the expected calibration
    error (bin-size-weighted mean |observed - predicted|)."""
    prob, y = np.asarray(prob, dtype=np.float64), np.asarray(y).astype(int)
    if prob.shape != y.shape or not len(y):
        raise ValueError(f"prob and y must be non-empty and the same length (got {prob.shape} and {y.shape})")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        row = {"lo": round(float(edges[b]), 6), "hi": round(float(edges[b + 1]), 6), "n": n}
        if n:
            mean_p = float(prob[mask].mean())
            observed = wilson(int(y[mask].sum()), n)
            row |= {"mean_predicted": round(mean_p, 6), "observed": observed.to_dict()}
            ece += n / len(y) * abs(observed.value - mean_p)
        bins.append(row)
    return {"bins": bins, "brier": round(float(np.mean((prob - y) ** 2)), 6), "ece": round(ece, 6), "n": int(len(y))}
