"""Aggregation of a Study's cells across seeds: two intervals per figure, each named for what it covers.

A cell is one recipe variant x seed x stress method x learning rate; its rows are one
persistence curve (a Measurement per metric at each eval step). Grouping the cells that differ
only in their seed gives, at every step and for every metric:

- `seed_mean`: the mean of the per-seed values with a 95% Student-t interval over seeds
  (n = number of seeds). This is the between-replicate spread: organisms trained from
  different seeds really differ, so this is the interval to quote for "this recipe".
  With one seed there is no spread to measure and the interval is null.
  For a share (k/n) the interval is cut at 0 and 1, where three spread-out seeds push it past.
- `pooled`: all prompts of all seeds counted together with a 95% Wilson interval
  (n = prompts). It treats the seeds as one big sample and ignores between-seed variance,
  so it is narrower; it is given for shares only (a value that is k/n).
"""

from __future__ import annotations

import math

from scipy.stats import t as student_t

from ..stats import wilson


def is_measurement(v) -> bool:
    return isinstance(v, dict) and {"value", "ci", "n"} <= set(v)


def t_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean with a Student-t interval over independent replicates; `ci` is None below two values."""
    k = len(values)
    mean = sum(values) / k
    if k < 2:
        return {"value": round(mean, 6), "ci": None, "n": k, "interval": "t over seeds"}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = student_t.ppf(0.5 + level / 2, k - 1) * sd / math.sqrt(k)
    return {"value": round(mean, 6), "ci": [round(mean - half, 6), round(mean + half, 6)], "n": k,
            "interval": "t over seeds"}


def pooled_wilson(measurements: list[dict]) -> dict | None:
    """All prompts of all seeds as one sample (Wilson), or None when a value is not a share k/n."""
    hits, total = 0, 0
    for m in measurements:
        k = m["value"] * m["n"]
        # Values are stored rounded to 6 decimals, so k/n comes back within n * 5e-7 of an integer.
        if not (0 <= m["value"] <= 1) or abs(k - round(k)) > 1e-3:
            return None
        hits, total = hits + round(k), total + m["n"]
    return {**wilson(hits, total).to_dict(), "interval": "Wilson, prompts pooled over seeds"}


def group_key(axes: dict) -> str:
    """A cell's axes without the seed, as a stable string: the cells it is averaged with."""
    return repr(sorted((k, repr(v)) for k, v in axes.items() if k != "seed"))


def aggregate(cells: list[dict]) -> list[dict]:
    """Per group of cells differing only in seed: per step and metric, per-seed values, seed mean, pooled."""
    groups: dict[str, list[dict]] = {}
    for c in cells:
        groups.setdefault(group_key(c["axes"]), []).append(c)
    out = []
    for members in groups.values():
        members.sort(key=lambda c: c["axes"]["seed"])
        axes = {k: v for k, v in members[0]["axes"].items() if k != "seed"}
        steps = sorted({r["step"] for c in members for r in c["rows"]})
        per_step = []
        for step in steps:
            at = [(c["axes"]["seed"], r) for c in members for r in c["rows"] if r["step"] == step]
            metrics = {}
            for name in sorted({k for _, r in at for k, v in r.items() if is_measurement(v)}):
                got = [(seed, r[name]) for seed, r in at if is_measurement(r.get(name))]
                metrics[name] = over_seeds(got)
            per_step.append({"step": step, "metrics": metrics})
        group = {"axes": axes, "seeds": [c["axes"]["seed"] for c in members], "cells": [c["id"] for c in members],
                 "steps": per_step}
        curves = specificity(members)
        if curves:
            group["specificity"] = curves
        out.append(group)
    return out


def over_seeds(got: list[tuple[int, dict]]) -> dict:
    """Per-seed (seed, measurement) pairs -> {per_seed, seed_mean, pooled}."""
    pooled = pooled_wilson([m for _, m in got])
    mean = t_interval([m["value"] for _, m in got])
    if pooled is not None and mean["ci"]:  # a share: its mean lies in [0, 1], so the t interval is cut there
        mean["ci"] = [max(mean["ci"][0], 0.0), min(mean["ci"][1], 1.0)]
    return {"per_seed": [{"seed": seed, **m} for seed, m in got], "seed_mean": mean, "pooled": pooled}


def specificity(members: list[dict]) -> dict:
    """The trigger-specificity curves (detectors/specificity.py) that adversarial cells record at their first
    and last step, averaged over seeds per edit-distance bucket: {"before"|"after": {"steps", "buckets",
    "seeds", "n_excluded_red_team"}} (a cell whose only curve is at step 0 gives "before" alone).
    `n_excluded_red_team`: per seed, the strings adversarial training trained on that the curve left out."""
    out = {}
    for when, pick in (("before", min), ("after", max)):
        per_bucket: dict[str, list[tuple[int, dict]]] = {}
        steps, excluded = set(), {}
        for c in members:
            rows = [r for r in c["rows"] if isinstance(r.get("specificity"), dict)]
            if not rows:
                continue
            row = pick(rows, key=lambda r: r["step"])
            steps.add(row["step"])
            excluded[c["axes"]["seed"]] = row["specificity"].get("n_excluded_red_team")
            for b in row["specificity"].get("buckets", []):
                if is_measurement(b.get("rate")):
                    per_bucket.setdefault(str(b["bucket"]), []).append((c["axes"]["seed"], b["rate"]))
        if per_bucket and not (when == "after" and steps == out.get("before", {}).get("steps")):
            out[when] = {"steps": steps, "buckets": {k: over_seeds(v) for k, v in per_bucket.items()},
                         "seeds": sorted(excluded), "n_excluded_red_team": [excluded[s] for s in sorted(excluded)]}
    for v in out.values():
        v["steps"] = sorted(v["steps"])
    return out
