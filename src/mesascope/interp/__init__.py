"""Interpretability detectors: activations at named hook points, probes, patching and steering."""

from .activation_store import ActivationStore, Activations
from .activations import BLOCKS, capture, capture_last_token, find_blocks, hook_points, resolve_hooks, resid_post
from .contrast import CONTRAST_PAIRS, ContrastPair, pair_direction
from .patching import activation_patching, make_pairs
from .probe_io import LinearProbe, load_probe, save_probe, transfer_auroc
from .probes import auroc_with_ci, build_probe_splits, contrast_direction, fit_probe, run_probes, supervised_probe
from .steering import defection_directions, steer, steering_curve

__all__ = ["ActivationStore", "Activations", "BLOCKS", "capture", "capture_last_token", "find_blocks", "hook_points",
           "resolve_hooks", "resid_post", "CONTRAST_PAIRS", "ContrastPair", "pair_direction", "activation_patching",
           "make_pairs", "LinearProbe", "load_probe", "save_probe", "transfer_auroc", "auroc_with_ci",
           "build_probe_splits", "contrast_direction", "fit_probe", "run_probes", "supervised_probe",
           "defection_directions", "steer", "steering_curve"]
