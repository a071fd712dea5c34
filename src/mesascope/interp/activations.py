"""Residual-stream activations at named hook points, the same names on every architecture.

A hook point is named like TransformerLens's: `blocks.{i}.resid_post` is the residual stream
after transformer block i (before the final norm, so the last block's is not
`hidden_states[-1]`, which Hugging Face returns already normalised).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# model_type -> dotted path of the list of transformer blocks, from the CausalLM wrapper.
BLOCKS: dict[str, str] = {
    "gpt2": "transformer.h",
    "llama": "model.layers",
    "qwen2": "model.layers",
    "mistral": "model.layers",
    "gpt_neox": "gpt_neox.layers",
}


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.resid_post"


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks: by the table, else the one ModuleList of the right length."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    n_layers = getattr(config, "num_hidden_layers", None)
    path = BLOCKS.get(model_type or "")
    if path:
        # The table's paths start at the CausalLM wrapper; a bare base model lacks the first part.
        for p in (path, path.split(".", 1)[-1]):
            try:
                blocks = model.get_submodule(p)
            except AttributeError:
                continue
            if isinstance(blocks, nn.ModuleList):
                return blocks
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and n_layers is not None and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find the transformer blocks of model type {model_type!r}: add its path to "
                     f"mesascope.interp.activations.BLOCKS (known: {', '.join(sorted(BLOCKS))})")


def n_blocks(model: nn.Module) -> int:
    return len(find_blocks(model))


@contextmanager
def last_token_hooks(blocks: nn.ModuleList, layers: Sequence[int], store: list[list[torch.Tensor]]) -> Iterator[None]:
    """While open, each block in `layers` appends its output at the last position to store[k]."""

    def make_hook(k: int):
        def hook(module, args, output):
            # A block returns a tensor in transformers 5 and a tuple (hidden, cache, ...) before it.
            hidden = output if isinstance(output, torch.Tensor) else output[0]
            store[k].append(hidden[:, -1].detach().float().cpu())
        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(k)) for k, layer in enumerate(layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def capture_last_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
                       batch_size: int = 128, layers: Sequence[int] | None = None,
                       on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Residual stream after each block at each prompt's last token: float32 [n_layers, n_prompts, d_model]."""
    model.eval()
    blocks = find_blocks(model)
    layers = list(range(len(blocks))) if layers is None else list(layers)
    device = next(model.parameters()).device
    # The base model skips the LM head: its [batch, seq, vocab] logits would dwarf everything kept here.
    body = model.base_model if isinstance(model, PreTrainedModel) else model
    store: list[list[torch.Tensor]] = [[] for _ in layers]
    # Sort by length so a batch wastes little on padding; restore order at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with last_token_hooks(blocks, layers, store):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            # Left padding puts every prompt's last token at position -1.
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, padding_side="left")
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # positions count from each row's first real token
            body(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
            if on_batch:
                on_batch(len(idx))
    d_model = store[0][0].shape[-1] if prompts and layers else 0
    out = np.empty((len(layers), len(prompts), d_model), dtype=np.float32)
    for k, chunks in enumerate(store):
        if chunks:
            out[k, order] = torch.cat(chunks).numpy()
    return out
