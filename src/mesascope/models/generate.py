"""Batched generation with a KV cache (greedy, or sampled at a temperature), stopping as soon as every row has ended.

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
def generate_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
                 max_new_tokens: int = 32, batch_size: int = 128, temperature: float = 0.0,
                 generator: torch.Generator | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
    """The new token ids of each prompt's completion, up to and including its first EOS.

    temperature 0 picks the argmax (greedy); above 0 each token is drawn from softmax(logits / T)
    with `generator`, so a seeded generator makes the samples reproducible. RL keeps the EOS:
    stopping is one of the choices the policy made and is scored like any other token.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    outputs: list[list[int]] = [[] for _ in prompts]
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
            nxt = _pick(out.logits[:, -1], temperature, generator)
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
            outputs[i] = row[: row.index(eos) + 1] if eos in row else row
        if on_batch:
            on_batch(len(idx))
    return outputs


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
             max_new_tokens: int = 32, batch_size: int = 128, temperature: float = 0.0,
             generator: torch.Generator | None = None,
             on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Completions of `prompts` (decoded, without the prompt, cut at EOS); greedy unless temperature > 0."""
    eos = tokenizer.eos_token_id
    rows = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        temperature=temperature, generator=generator, on_batch=on_batch)
    return [tokenizer.decode(r[:-1] if r and r[-1] == eos else r, skip_special_tokens=True).strip() for r in rows]
