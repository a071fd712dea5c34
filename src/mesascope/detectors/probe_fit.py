"""Fitting and scoring the linear probes, layer by layer (the estimators behind `probes.py`).

Every probe is scored by AUROC on held-out prompts against each clean set and against the worst
of them; the layer reported for a probe kind is chosen on a validation split of the training
prompts, never on the test prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..models.activations import capture_last_token, resid_post
from ..config import Spec  # a probes.ProbeSpec (imported there, not here: probes imports this module)
from ..stats import Measurement, auroc_interval, worst_of
from .contrast import contrast_direction, pair_direction
from .controls import calibration, random_direction_control, top_principal_component, variance_ratio
from .linear import LinearProbe, direction_probe, logistic_probe

SPLITS = ("train_pos", "train_neg", "test_pos", "test_neg", "test_near_miss")  # required
# Clean held-out sets scored against the triggered ones -> their label. test_other_prefix is optional.
NEGATIVES = {"test_neg": "clean", "test_near_miss": "near_miss", "test_other_prefix": "other_prefix"}


def auroc_key(label: str) -> str:
    return "auroc" if label == "clean" else f"auroc_{label}"


def auroc_with_ci(scores: Sequence[float], labels: Sequence[int], *_unused, level: float = 0.95, **_ignored) -> Measurement:
    """AUROC of `scores` for `labels` (1 = positive) with a score-type interval (`stats.auroc_interval`).

    The interval no longer comes from a percentile bootstrap, which collapses to [1, 1] at a perfect
    separation; the bootstrap arguments older callers pass are accepted and ignored.
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(int)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if not n_pos or not n_neg:
        raise ValueError(f"AUROC needs both classes (got {n_pos} positives, {n_neg} negatives)")
    value = float(roc_auc_score(y, s))
    return Measurement(value, auroc_interval(value, n_pos, n_neg, level), int(len(y)))


def fit_probe(X: np.ndarray, y: np.ndarray) -> Pipeline:
    """Standardised logistic regression; `decision_function` > 0 predicts the positive class."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    return probe.fit(X, y)


def supervised_probe(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *,
                     n_bootstrap: int = 1000, seed: int = 0) -> Measurement:
    """Fit on one layer's training activations [n, d], AUROC on its test activations."""
    probe = fit_probe(X_train, y_train)
    return auroc_with_ci(probe.decision_function(X_test), y_test, n_bootstrap, seed)


def diff_of_means(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """mean(pos) - mean(neg) over the example axis (-2): [n, d] -> [d], or [layers, n, d] -> [layers, d]."""
    return pos.mean(axis=-2) - neg.mean(axis=-2)


def score_rows(scores: dict[str, np.ndarray], n_bootstrap: int, seed: int) -> dict:
    """AUROC of scores["test_pos"] against each negative set present, plus the worst of them.

    The worst (lowest AUROC) set is the false-positive side that matters: a monitor must not fire
    on any kind of clean prompt. `worst_negatives` names which set it was; its interval covers the
    minimum over the sets (`stats.worst_of`), so it is wider than that set's own 95% interval.
    n_bootstrap and seed are kept for callers and unused (the intervals are score-type).
    """
    pos = scores["test_pos"]
    found: dict[str, Measurement] = {}
    for name, label in NEGATIVES.items():
        if name in scores:
            neg = scores[name]
            labels = np.r_[np.ones(len(pos), dtype=int), np.zeros(len(neg), dtype=int)]
            found[label] = auroc_with_ci(np.concatenate([pos, neg]), labels)
    # The worst set's interval accounts for picking the minimum: each set at the Bonferroni level.
    k = len(found)
    joint = {label: auroc_interval(m.value, len(pos), m.n - len(pos), 1 - 0.05 / k) for label, m in found.items()}
    worst = min(found, key=lambda label: found[label].value)
    return {**{auroc_key(label): m.to_dict() for label, m in found.items()},
            "auroc_worst": worst_of(found, joint).to_dict(), "worst_negatives": worst}


def _sign_free(row: dict) -> dict:
    """max(A, 1 - A) per clean set, and for the worst set the better of the two signs each at its
    own worst set. Labelled "sign-free": it has looked at labels to pick the sign."""
    per = {k: v["value"] for k, v in row.items() if k.startswith("auroc") and k != "auroc_worst"}
    out = {k: round(max(a, 1 - a), 6) for k, a in per.items()}
    out["auroc_worst"] = round(max(min(per.values()), min(1 - a for a in per.values())), 6)
    return out


def _fit(train_pos: np.ndarray, train_neg: np.ndarray, pair_dirs: dict[str, np.ndarray]) -> dict[str, LinearProbe]:
    """Every probe kind at every layer from training activations [layers, n, d]: kind -> LinearProbe."""
    y = np.r_[np.ones(train_pos.shape[1], dtype=int), np.zeros(train_neg.shape[1], dtype=int)]
    pooled = np.concatenate([train_pos, train_neg], axis=1)
    pcs = [top_principal_component(x) for x in pooled]
    probes = {"supervised": logistic_probe([fit_probe(x, y) for x in pooled]),
              "diff_of_means": direction_probe("diff_of_means", diff_of_means(train_pos, train_neg)),
              "pca": direction_probe("pca", np.stack([v for v, _ in pcs]),
                                     {"explained_variance_ratio": [round(r, 6) for _, r in pcs]})}
    for name, d in pair_dirs.items():
        probes[f"contrast:{name}"] = direction_probe(f"contrast:{name}", d)
    return probes


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0)), 6)


def pair_cosines(probes: dict[str, LinearProbe], layer: int) -> dict:
    """At `layer`, the cosine between every two contrast-pair directions (each defect minus honest) and of
    each with the difference-of-means direction. Both come from training data only (the pairs from
    their own prompts, difference of means from the training prompts), never from test prompts."""
    dirs = {k.split(":", 1)[1]: p.coef[layer] for k, p in probes.items() if k.startswith("contrast:")}
    dom = probes["diff_of_means"].coef[layer]
    return {"cosines": {a: {b: cosine(u, v) for b, v in dirs.items()} for a, u in dirs.items()},
            "with_diff_of_means": {a: cosine(u, dom) for a, u in dirs.items()}}


def probe_split_names(splits: dict[str, list[str]]) -> list[str]:
    """The splits a probe reads, in the order they are captured together."""
    return ["train_pos", "train_neg", "test_pos", *(n for n in NEGATIVES if splits.get(n))]


def capture_splits(model, tokenizer, splits: dict[str, list[str]], names: list[str], batch_size: int, tick,
                   capture=None) -> dict:
    """Last-token activations [layers, n, d] of each named split, captured in one pass over all of them;
    `capture(prompts, batch_size=, on_batch=)` (a Context's stored capture) in place of capture_last_token."""
    prompts = [p for name in names for p in splits[name]]
    if capture is not None:
        acts = capture(prompts, batch_size=batch_size, on_batch=tick)
    else:
        acts = capture_last_token(model, tokenizer, prompts, batch_size=batch_size, on_batch=tick)
    bounds = np.cumsum([0] + [len(splits[name]) for name in names])
    return {name: acts[:, bounds[k]:bounds[k + 1]] for k, name in enumerate(names)}


def fit_linear_probes(model, tokenizer, splits: dict[str, list[str]], spec: Spec, *, meta: dict | None = None,
                      batch_size: int = 128) -> dict[str, LinearProbe]:
    """The probes run_probes scores, fitted on `splits`' training prompts, ready for `save_probe`.

    Keys: "supervised", "diff_of_means", "pca", and "contrast:<pair name>" for each pair in `spec`.
    """
    part = capture_splits(model, tokenizer, splits, ["train_pos", "train_neg"], batch_size, None)
    probes = _fit(part["train_pos"], part["train_neg"],
                  {p.name: pair_direction(model, tokenizer, p) for p in spec.contrast_pairs})
    n_train = {"triggered": len(splits["train_pos"]), "clean": len(splits["train_neg"])}
    for p in probes.values():
        p.meta |= {**(meta or {}), "n_train": n_train}
    return probes


def _validation_split(part: dict, spec: Spec) -> tuple[dict, dict]:
    """(fit, validation) indices into the training prompts of each class; the test prompts play no part."""
    rng = np.random.default_rng(spec.seed)
    fit_idx, val_idx = {}, {}
    for name in ("train_pos", "train_neg"):
        n = part[name].shape[1]
        order = rng.permutation(n)
        k = min(max(1, round(spec.validation_fraction * n)), n - 2)
        val_idx[name], fit_idx[name] = order[:k], order[k:]
    return fit_idx, val_idx


def choose_layers(part: dict, probes: dict[str, LinearProbe], spec: Spec) -> dict[str, dict]:
    """Per probe kind, the layer it is reported at: the best validation AUROC on training prompts held back
    from fitting (supervised: refitted without them, as `_best_layer`; difference of means: recomputed
    without them; label-free directions as they are). Never chosen on the test prompts."""
    fit_idx, val_idx = _validation_split(part, spec)
    val = {n: part[n][:, val_idx[n]] for n in ("train_pos", "train_neg")}
    y = np.r_[np.ones(val["train_pos"].shape[1], dtype=int), np.zeros(val["train_neg"].shape[1], dtype=int)]

    def aurocs(scores_pos: np.ndarray, scores_neg: np.ndarray) -> list[float]:
        return [round(float(roc_auc_score(y, np.r_[a, b])), 6) for a, b in zip(scores_pos, scores_neg)]

    best, rows = _best_layer(part, spec)
    found = {"supervised": [r["auroc"] for r in rows]}
    fit_dom = part["train_pos"][:, fit_idx["train_pos"]].mean(1) - part["train_neg"][:, fit_idx["train_neg"]].mean(1)
    found["diff_of_means"] = aurocs(np.einsum("lnd,ld->ln", val["train_pos"], fit_dom),
                                    np.einsum("lnd,ld->ln", val["train_neg"], fit_dom))
    for kind, probe in probes.items():
        if kind not in found:
            found[kind] = aurocs(probe.score(val["train_pos"]), probe.score(val["train_neg"]))
    layers = {kind: best if kind == "supervised" else int(np.argmax(v)) for kind, v in found.items()}  # ties: log loss
    return {kind: {"layer": layers[kind], "hook": resid_post(layers[kind]), "validation_auroc": v,
                   "n_validation": int(len(y)),
                   "chosen_by": f"validation AUROC on {spec.validation_fraction:.0%} of the training prompts"}
            for kind, v in found.items()}


def _best_layer(part: dict, spec: Spec) -> tuple[int, list[dict]]:
    """The layer whose supervised probe scores best on a validation split carved from the training
    prompts (AUROC, ties broken by log loss): the test prompts play no part in choosing it."""
    fit_idx, val_idx = _validation_split(part, spec)
    rows = []
    for layer in range(part["train_pos"].shape[0]):
        def xy(idx):
            X = np.concatenate([part["train_pos"][layer][idx["train_pos"]], part["train_neg"][layer][idx["train_neg"]]])
            return X, np.r_[np.ones(len(idx["train_pos"]), dtype=int), np.zeros(len(idx["train_neg"]), dtype=int)]
        probe = fit_probe(*xy(fit_idx))
        Xv, yv = xy(val_idx)
        rows.append({"layer": layer, "auroc": round(float(roc_auc_score(yv, probe.decision_function(Xv))), 6),
                     "log_loss": round(float(log_loss(yv, probe.predict_proba(Xv)[:, 1], labels=[0, 1])), 6),
                     "n": int(len(yv))})
    best = max(rows, key=lambda r: (r["auroc"], -r["log_loss"]))
    return best["layer"], rows


def probe_model(model, tokenizer, splits: dict[str, list[str]], spec: Spec, batch_size: int, tick, *,
                diagnostics: bool, capture=None) -> dict:
    """All probe kinds at every layer of one model: kind -> per-layer score rows (and diagnostics).
    `capture`: how the model's activations are captured, as `capture_splits` takes it."""
    negatives = [n for n in NEGATIVES if splits.get(n)]
    part = capture_splits(model, tokenizer, splits, probe_split_names(splits), batch_size, tick, capture)
    probes = _fit(part["train_pos"], part["train_neg"],
                  {p.name: pair_direction(model, tokenizer, p) for p in spec.contrast_pairs})
    test = {n: part[n] for n in ("test_pos", *negatives)}
    scores = {kind: {n: p.score(x) for n, x in test.items()} for kind, p in probes.items()}
    n_layers = part["train_pos"].shape[0]
    out: dict = {kind: [] for kind in probes}
    extra: dict = {"pca_extra": [], "random_directions": [], "variance_ratio": [], "pair_cosines": []}
    for layer in range(n_layers):
        for kind in probes:
            out[kind].append(score_rows({n: s[layer] for n, s in scores[kind].items()}, spec.n_bootstrap, spec.seed))
        if diagnostics:
            evr = probes["pca"].meta["explained_variance_ratio"][layer]
            extra["pca_extra"].append({"auroc_sign_free": _sign_free(out["pca"][layer]),
                                       "explained_variance_ratio": evr})
            neg = {auroc_key(NEGATIVES[n]): test[n][layer] for n in negatives}
            rand = random_direction_control(test["test_pos"][layer], neg, spec.n_random_directions, spec.seed + layer,
                                            compare={k: out[k][layer]["auroc_worst"]["value"] for k in probes})
            extra["random_directions"].append({k: v for k, v in rand.items() if k != "share_below"})
            dom = probes["diff_of_means"].coef[layer]
            for kind in probes:
                # Where this probe's worst-set AUROC falls among random directions', and for the
                # unsupervised directions how closely they point along the trigger's mean shift.
                out[kind][layer]["share_of_random_directions_below"] = rand["share_below"][kind]
                if kind == "pca" or kind.startswith("contrast:"):
                    out[kind][layer]["cosine_with_diff_of_means"] = cosine(probes[kind].coef[layer], dom)
            extra["pair_cosines"].append(pair_cosines(probes, layer))
            extra["variance_ratio"].append({NEGATIVES[n]: variance_ratio(test["test_pos"][layer], test[n][layer], dom)
                                            for n in negatives})
        tick(1)
    if diagnostics:
        layer, validation = _best_layer(part, spec)
        sup = probes["supervised"]
        logits = np.concatenate([scores["supervised"][n][layer] for n in test])
        y = np.r_[np.ones(len(splits["test_pos"]), dtype=int),
                  np.zeros(sum(len(splits[n]) for n in negatives), dtype=int)]
        extra["calibration"] = {
            "layer": layer, "hook": sup.hooks[layer], "probe": "supervised",
            "chosen_by": f"validation AUROC on {spec.validation_fraction:.0%} of the training prompts (not test)",
            "validation": validation, "negatives": [NEGATIVES[n] for n in negatives],
            **calibration(expit(logits), y, spec.calibration_bins)}
        extra["chosen_layers"] = choose_layers(part, probes, spec)
        out["_extra"] = extra
    return out


def transfer_auroc(probe: LinearProbe, model, tokenizer, splits: dict[str, list[str]], *, n_bootstrap: int = 1000,
                   seed: int = 0, batch_size: int = 128) -> list[dict]:
    """Score `probe` (fitted elsewhere) on `model`'s activations for the test splits: one row per hook.

    Each row holds the AUROC of triggered (test_pos) against every negative set present
    (test_neg -> auroc, test_near_miss -> auroc_near_miss, test_other_prefix -> auroc_other_prefix)
    and auroc_worst, the lowest of them, with bootstrap 95% intervals. The probe's sign is used as
    saved; nothing is refitted or flipped on this model.
    """
    width = getattr(getattr(model, "config", None), "hidden_size", None)
    if width is not None and width != probe.d_model:
        raise ValueError(f"the probe reads d_model={probe.d_model} but the model's hidden size is {width}: "
                         "a probe transfers only between organisms of the same width")
    names = ["test_pos", *(n for n in NEGATIVES if splits.get(n))]
    if not splits.get("test_pos") or len(names) < 2:
        raise ValueError("splits need test_pos and at least one of " + ", ".join(NEGATIVES))
    prompts = [p for n in names for p in splits[n]]
    acts = capture_last_token(model, tokenizer, prompts, batch_size=batch_size, layers=probe.layers)
    scores = probe.score(acts)
    bounds = np.cumsum([0] + [len(splits[n]) for n in names])
    by_set = {n: scores[:, bounds[k]:bounds[k + 1]] for k, n in enumerate(names)}
    return [{"layer": layer, "hook": hook, **score_rows({n: s[i] for n, s in by_set.items()}, n_bootstrap, seed)}
            for i, (layer, hook) in enumerate(zip(probe.layers, probe.hooks))]
