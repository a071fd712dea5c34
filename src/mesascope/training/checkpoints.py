"""Resumable checkpoints of a training loop: weights as safetensors, the optimizer's state via
torch.save (tensors and numbers only, read back with weights_only=True), and the loop's own state
(its step, its log) as JSON, each checkpoint an atomic directory `step-NNNNNNN` (store.atomic_dir).

A directory holding state.json is complete; the newest complete one is where a rerun resumes.
The SFT loop (sft.py) and RLOO (rl.py) both checkpoint through here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..store import atomic_dir, atomic_write_json


def save_checkpoint(ckpt_dir: Path, step: int, model, opt: torch.optim.Optimizer, state: dict, *,
                    adapters_only: bool = False, keep_weights: bool = False) -> Path:
    """Write checkpoint `step` (the trainable parameters only with `adapters_only`), then drop the older
    ones (with `keep_weights`, only their optimizer state). `state` is JSON: the loop's step, log, ..."""
    final = ckpt_dir / f"step-{step:07d}"
    with atomic_dir(final) as tmp:
        if adapters_only:  # adapters only: the frozen base is the base model's own file
            save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                      str(tmp / "model.safetensors"))
        else:
            save_model(model, str(tmp / "model.safetensors"))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        atomic_write_json(tmp / "state.json", state)
    for old in ckpt_dir.glob("step-*"):
        if old == final:
            continue
        if keep_weights:
            (old / "optimizer.pt").unlink(missing_ok=True)
        else:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_newest(ckpt_dir: Path | None, model, opt: torch.optim.Optimizer, *, adapters_only: bool = False) -> dict | None:
    """Load the newest complete checkpoint into `model` and `opt`; its state, or None when there is none."""
    if ckpt_dir is None or not ckpt_dir.exists():
        return None
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / "state.json").exists())
    if not done:
        return None
    last = done[-1]
    if adapters_only:
        missing = model.load_state_dict(load_file(str(last / "model.safetensors")), strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"checkpoint {last} does not fit this model ({missing.unexpected_keys[0]}): "
                             "delete the stage's checkpoints folder to start over")
    else:
        load_model(model, str(last / "model.safetensors"))
    opt.load_state_dict(torch.load(last / "optimizer.pt", weights_only=True))
    return json.loads((last / "state.json").read_text())
