"""Interpretability detectors: residual-stream activations at named hook points, and probes on them."""

from .activations import BLOCKS, capture_last_token, find_blocks, resid_post
from .probes import auroc_with_ci, build_probe_splits, contrast_direction, fit_probe, run_probes, supervised_probe

__all__ = ["BLOCKS", "capture_last_token", "find_blocks", "resid_post", "auroc_with_ci", "build_probe_splits",
           "contrast_direction", "fit_probe", "run_probes", "supervised_probe"]
