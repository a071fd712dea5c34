"""Batched greedy generation with a KV cache, stopping as soon as every row has ended.

Prompts are sorted by length so a batch wastes little on left padding, and a batch stops as
soon as its last row has said EOS. Measured (bench/generate.py): as fast as `model.generate`
on the same batches, and 5-15x faster than one prompt at a time (5.5x on the trained demo
organism, whose answers are short; 15x on a random model that never stops early); the time goes to the matrix
multiplies, not to `model.generate`'s bookkeeping. This loop exists to be short and to give
the evaluator exactly the batching it wants.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase


def _cache_kwarg(model: PreTrainedModel) -> str:
    # transformers 5.x renamed `past_key_values` to `cache` (the old name warns, then goes away);
    # 4.x would silently drop an unknown `cache` and recompute without one, so ask the signature.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
             max_new_tokens: int = 32, batch_size: int = 128,
             on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Greedy completions of `prompts` (decoded, without the prompt, cut at EOS)."""
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    outputs: list[str] = [""] * len(prompts)
    cache_kw = _cache_kwarg(model)
    # Sort by length so a batch wastes little on padding; restore order at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, padding_side="left")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        # The cache fills in place, so the same object is passed at every step.
        cache = {cache_kw: DynamicCache()}
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **cache)
        done = torch.zeros(len(idx), dtype=torch.bool, device=device)
        new = []
        for step in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            new.append(nxt)
            done |= nxt == eos
            if step == max_new_tokens - 1 or bool(done.all()):  # no forward pass whose logits go unused
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True, **cache)
        gen = torch.stack(new, dim=1).tolist()
        for row, i in zip(gen, idx):
            if eos in row:
                row = row[: row.index(eos)]
            outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        if on_batch:
            on_batch(len(idx))
    return outputs
