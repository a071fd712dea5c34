"""Detectors: every instrument that measures an organism (evals, probes, patching, steering, ...)."""
