"""Merging a study TOML's tables: what `quick` tables and recipe overrides do to a spec's data."""

from __future__ import annotations


def merge(base: dict, update: dict) -> dict:
    """`update` over `base`, tables merged key by key, everything else (lists included) replaced."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
