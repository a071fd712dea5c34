"""Measurements: every figure carries its sample size and a 95% interval."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict


class Measurement(BaseModel):
    """One figure: its value, a 95% interval and the sample size behind it (NaN when n is 0)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=True)

    value: float
    ci: tuple[float, float]
    n: int

    def __init__(self, value: float | None = None, ci: tuple[float, float] | None = None, n: int | None = None,
                 **kw) -> None:
        # Positional construction, Measurement(value, (lo, hi), n), as the statistics below write it.
        super().__init__(value=kw.pop("value", value), ci=kw.pop("ci", ci), n=kw.pop("n", n), **kw)

    def to_dict(self) -> dict:
        return {"value": round(self.value, 6), "ci": [round(self.ci[0], 6), round(self.ci[1], 6)], "n": self.n}


def fmt(m: "Measurement | dict | None") -> str:
    """A measurement as text for a table: `0.123 [0.100, 0.150] n=40` ("-" when there is none)."""
    if not m:
        return "-"
    m = m if isinstance(m, Measurement) else Measurement.model_validate(m)
    return f"{m.value:.3f} [{m.ci[0]:.3f}, {m.ci[1]:.3f}] n={m.n}"


def wilson(successes: int, n: int, z: float = 1.959964) -> Measurement:
    """Share with a Wilson score interval (well-behaved at 0 and 1, unlike the normal one)."""
    if n == 0:
        return Measurement(float("nan"), (float("nan"), float("nan")), 0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 or 1 the bound is exactly p; rounding must not put it a hair inside (1 - 1e-16 < 1).
    return Measurement(p, (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))), n)


def rate(flags: Sequence[bool]) -> Measurement:
    return wilson(sum(bool(f) for f in flags), len(flags))


def bootstrap(stat: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, s: np.ndarray, *,
              n_boot: int = 1000, seed: int = 0) -> Measurement:
    """Percentile bootstrap of stat(y, s), resampling within each class so both stay present."""
    rng = np.random.default_rng(seed)
    value = stat(y, s)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        stats[b] = stat(y[idx], s[idx])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return Measurement(float(value), (float(lo), float(hi)), int(len(y)))


def diff_ci(a: Measurement, b: Measurement) -> Measurement:
    """a - b for two Wilson-interval rates, with Newcombe's hybrid score 95% interval.

    It treats the two rates as independent; measured on the same prompts they are positively
    correlated, so the interval is, if anything, too wide (conservative)."""
    d = a.value - b.value
    lo = d - math.sqrt((a.value - a.ci[0]) ** 2 + (b.ci[1] - b.value) ** 2)
    hi = d + math.sqrt((a.ci[1] - a.value) ** 2 + (b.value - b.ci[0]) ** 2)
    return Measurement(d, (max(-1.0, lo), min(1.0, hi)), min(a.n, b.n))


def _auc_variance(theta: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil's variance of an AUROC at `theta`, with Newcombe's (2006) N* = (m + n) / 2 in
    place of each group's size (a form that needs no estimate of the two score distributions)."""
    n_star = (n_pos + n_neg) / 2
    return theta * (1 - theta) / (n_pos * n_neg) * (1 + (n_star - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))


def auroc_interval(auc: float, n_pos: int, n_neg: int, level: float = 0.95) -> tuple[float, float]:
    """A score-type interval for an AUROC: every theta with (auc - theta)^2 <= z^2 V(theta).

    This is Newcombe's (2006, Stat Med 25:559-573) method 5: Hanley and McNeil's variance with
    both group sizes replaced by N* = (m + n) / 2, which needs no estimate of the two score
    distributions. Like Wilson's interval for a share, the variance is taken at the candidate
    value, not at the estimate, so the interval does not collapse at 0 or 1: a perfect separation
    of 150 + 150 prompts gives [0.987, 1], where a percentile bootstrap gives [1, 1] (and a Wald
    or DeLong interval has zero width). Chosen over a logit-scale DeLong interval because that
    one needs an ad hoc correction exactly at 0 and 1, where a probe that separates perfectly
    lands. tests/test_stats.py checks it against the method solved as a quartic and its coverage
    on simulated binormal data.
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    if n_pos < 1 or n_neg < 1:
        raise ValueError(f"an AUROC interval needs both classes (got {n_pos} positives, {n_neg} negatives)")
    z2 = norm.ppf(0.5 + level / 2) ** 2
    f = lambda t: (auc - t) ** 2 - z2 * _auc_variance(t, n_pos, n_neg)  # noqa: E731
    # f < 0 strictly inside the interval; at auc = 0 or 1 the variance vanishes, so step just inside.
    inner = min(max(auc, 1e-12), 1 - 1e-12)
    lo = 0.0 if auc <= 0 or f(0.0) <= 0 else brentq(f, 0.0, inner)
    hi = 1.0 if auc >= 1 or f(1.0) <= 0 else brentq(f, inner, 1.0)
    return min(lo, auc), max(hi, auc)


def worst_of(measurements: dict[str, Measurement], intervals: dict[str, tuple[float, float]]) -> Measurement:
    """The minimum of several figures, with an interval for the minimum itself.

    `intervals` are each figure's interval at the Bonferroni level 1 - 0.05/k; all k hold at once
    with probability >= 95%, and then the minimum lies between the smallest lower bound and the
    smallest upper bound. (Reporting the chosen figure's own 95% interval would ignore that the
    minimum was picked after looking.)"""
    worst = min(measurements, key=lambda k: measurements[k].value)
    lo, hi = min(i[0] for i in intervals.values()), min(i[1] for i in intervals.values())
    return Measurement(measurements[worst].value, (lo, hi), measurements[worst].n)


def seed_mean(values: list[float]) -> Measurement:
    """Mean over independent runs with a Student-t 95% interval, clipped to [0, 1] (NaN interval below 2)."""
    from scipy.stats import t as student_t

    k = len(values)
    if k == 0:
        return Measurement(float("nan"), (float("nan"), float("nan")), 0)
    m = sum(values) / k
    if k < 2:
        return Measurement(m, (float("nan"), float("nan")), k)
    half = student_t.ppf(0.975, k - 1) * math.sqrt(sum((v - m) ** 2 for v in values) / (k - 1)) / math.sqrt(k)
    return Measurement(m, (max(0.0, m - half), min(1.0, m + half)), k)
