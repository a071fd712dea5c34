"""Linear probes as data: fit, save (safetensors + JSON), load, and score on another organism.

Every probe kind is one affine map per hook point, score = ((x - mean) / scale) . coef + intercept:
logistic regression keeps its standardiser in mean/scale; difference-of-means, contrast pairs
and principal components have mean 0, scale 1, intercept 0 and their direction as coef. So a
probe fitted on one organism scores any other with the same d_model at the same hook names:
`transfer_auroc` asks whether a direction found in organism A detects the trigger in organism B.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ..store import atomic_write_bytes, atomic_write_json
from ..models.activations import resid_post

FORMAT = "mesascope-probe/1"
TENSORS = ("coef", "intercept", "mean", "scale")


@dataclass
class LinearProbe:
    kind: str  # "supervised", "diff_of_means", "contrast:<pair>", "pca", ...
    hooks: list[str]  # one per row of coef, e.g. "blocks.2.resid_post"
    coef: np.ndarray  # [n_hooks, d_model]
    intercept: np.ndarray  # [n_hooks]
    mean: np.ndarray  # [n_hooks, d_model]
    scale: np.ndarray  # [n_hooks, d_model]
    meta: dict = field(default_factory=dict)  # organism fingerprint, pair, n_train, ...

    def __post_init__(self) -> None:
        n, d = np.shape(self.coef)
        shapes = {"intercept": (n,), "mean": (n, d), "scale": (n, d)}
        bad = {k: np.shape(getattr(self, k)) for k, s in shapes.items() if np.shape(getattr(self, k)) != s}
        if bad or len(self.hooks) != n:
            raise ValueError(f"probe arrays disagree: coef is {(n, d)}, hooks {len(self.hooks)}, others {bad}")

    @property
    def d_model(self) -> int:
        return int(self.coef.shape[1])

    @property
    def layers(self) -> list[int]:
        """Block index of each hook (all hooks of these probes are `blocks.{i}.resid_post`)."""
        out = []
        for h in self.hooks:
            m = re.fullmatch(r"blocks\.(\d+)\.resid_post", h)
            if not m:
                raise ValueError(f"hook {h!r} is not a blocks.{{i}}.resid_post hook point")
            out.append(int(m.group(1)))
        return out

    def score(self, acts: np.ndarray) -> np.ndarray:
        """Scores [n_hooks, n] from activations [n_hooks, n, d] (or [n, d] for a one-hook probe)."""
        acts = np.asarray(acts, dtype=np.float64)
        if acts.ndim == 2 and len(self.hooks) == 1:
            acts = acts[None]
        if acts.ndim != 3 or acts.shape[0] != len(self.hooks) or acts.shape[2] != self.d_model:
            raise ValueError(f"acts must be [n_hooks={len(self.hooks)}, n, d_model={self.d_model}] "
                             f"(got {list(acts.shape)}): capture at exactly the probe's hooks")
        z = (acts - self.mean[:, None]) / self.scale[:, None]
        return np.einsum("lnd,ld->ln", z, self.coef) + self.intercept[:, None]


def direction_probe(kind: str, directions: np.ndarray, meta: dict | None = None) -> LinearProbe:
    """A probe that scores x . direction at every block: [n_layers, d] -> LinearProbe."""
    directions = np.asarray(directions, dtype=np.float64)
    n, d = directions.shape
    return LinearProbe(kind, [resid_post(i) for i in range(n)], directions, np.zeros(n), np.zeros((n, d)),
                       np.ones((n, d)), dict(meta or {}))


def logistic_probe(pipelines: list, meta: dict | None = None) -> LinearProbe:
    """Per-layer fitted StandardScaler+LogisticRegression pipelines (probes.fit_probe) as one LinearProbe."""
    scalers = [p[0] for p in pipelines]
    lrs = [p[-1] for p in pipelines]
    return LinearProbe("supervised", [resid_post(i) for i in range(len(pipelines))],
                       np.stack([lr.coef_[0] for lr in lrs]).astype(np.float64),
                       np.array([lr.intercept_[0] for lr in lrs], dtype=np.float64),
                       np.stack([s.mean_ for s in scalers]).astype(np.float64),
                       np.stack([s.scale_ for s in scalers]).astype(np.float64), dict(meta or {}))


def save_probe(path: str | Path, probe: LinearProbe) -> Path:
    """Write `probe.safetensors` (coef, intercept, mean, scale) and `probe.json` (kind, hooks, d_model, meta)."""
    path = Path(path)
    tensors = {k: np.ascontiguousarray(getattr(probe, k), dtype=np.float64) for k in TENSORS}
    atomic_write_bytes(path / "probe.safetensors", st_save(tensors))
    atomic_write_json(path / "probe.json", {"format": FORMAT, "kind": probe.kind, "hooks": probe.hooks,
                                            "d_model": probe.d_model, "meta": probe.meta})
    return path


def load_probe(path: str | Path) -> LinearProbe:
    """Read a probe written by `save_probe`."""
    path = Path(path)
    missing = [f for f in ("probe.json", "probe.safetensors") if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(f"{path} lacks {missing}: not a directory written by save_probe")
    info = json.loads((path / "probe.json").read_text(encoding="utf-8"))
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}/probe.json has format {info.get('format')!r}; this version reads {FORMAT!r}")
    arrays = st_load((path / "probe.safetensors").read_bytes())
    probe = LinearProbe(info["kind"], list(info["hooks"]), *(arrays[k] for k in TENSORS), meta=info.get("meta", {}))
    if probe.d_model != info["d_model"]:
        raise ValueError(f"{path}: d_model {info['d_model']} in probe.json, {probe.d_model} in the tensors")
    return probe
